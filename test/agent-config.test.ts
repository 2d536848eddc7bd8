// The agent's YAML configuration: read as written, refused with the file, line and key when it cannot be.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadAgentConfig } from '../src/cli/agent-config.ts';
import { UsageError } from '../src/util/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'precog-config-'));
const file = (name: string, text: string): string => {
  const f = join(dir, name);
  writeFileSync(f, text);
  return f;
};
const refused = (f: string, re: RegExp) =>
  assert.throws(
    () => loadAgentConfig(f),
    (err: Error) => err instanceof UsageError && re.test(err.message),
  );

test('a configuration is read key by key; an empty file means every default', () => {
  const ok = file(
    'ok.yaml',
    '# agent\nlisten: 0.0.0.0:7070\nstate-dir: /var/lib/precog/agent\npki: /etc/precog/pki\nname: alpha\n' +
      'spill-size: 4GiB\nidle-timeout: 120s\n',
  );
  assert.deepEqual(loadAgentConfig(ok), {
    listen: '0.0.0.0:7070',
    'state-dir': '/var/lib/precog/agent',
    pki: '/etc/precog/pki',
    name: 'alpha',
    'spill-size': '4GiB',
    'idle-timeout': '120s',
  });
  assert.deepEqual(loadAgentConfig(file('empty.yaml', '# nothing\n')), {});
});

test('an unknown key, a bad value, bad YAML or a missing file name the file, the line and the key', () => {
  refused(
    file('k.yaml', 'listen: 0.0.0.0:7070\n\nspil-size: 1GiB\n'),
    /k\.yaml, line 3: unknown key "spil-size"; known keys: listen/,
  );
  refused(
    file('v.yaml', 'listen: 0.0.0.0:7070\nidle-timeout: soon\n'),
    /v\.yaml, line 2: key "idle-timeout": .*soon/,
  );
  refused(file('l.yaml', 'listen: nowhere\n'), /l\.yaml, line 1: key "listen": .*HOST:PORT/);
  refused(
    file('d.yaml', 'state-dir: relative/dir\n'),
    /line 1: key "state-dir": must be an absolute directory/,
  );
  refused(file('y.yaml', 'listen: [1\n'), /y\.yaml, line \d: not valid YAML/);
  refused(file('dup.yaml', 'name: a\nname: b\n'), /dup\.yaml, line 2: not valid YAML/);
  refused(file('list.yaml', '- listen\n'), /must be a mapping/);
  refused(file('nested.yaml', 'listen:\n  host: x\n'), /line 1: key "listen" needs a single value/);
  refused(join(dir, 'missing.yaml'), /missing\.yaml: cannot read it \(ENOENT\)/);
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
