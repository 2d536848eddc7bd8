/**
 * The agent's configuration file (YAML, docs/deploy.md): the same settings as its flags, which override it. A file
 * that cannot be read stops the agent with the file, the line and the key.
 */
import { readFileSync } from 'node:fs';
import { isMap, isScalar, LineCounter, parseDocument } from 'yaml';
import { parseEndpoint } from '../transport/tls.ts';
import { UsageError } from '../util/errors.ts';
import { parseDuration, parseSize } from '../util/units.ts';

/** Every key the file may hold, with the check its value gets (the flag's own parser). */
export const AGENT_CONFIG_KEYS: Record<string, (v: string) => unknown> = {
  listen: (v) => parseEndpoint(v, 'listen'),
  'state-dir': (v) => (v.startsWith('/') ? v : bad('an absolute directory')),
  pki: (v) => (v.startsWith('/') ? v : bad('an absolute directory')),
  name: (v) => (/^[A-Za-z0-9._-]{1,63}$/.test(v) ? v : bad('letters, digits, dot, dash or underscore')),
  'spill-size': (v) => parseSize(v, 'spill-size'),
  'idle-timeout': (v) => parseDuration(v, 'idle-timeout'),
  'handshake-timeout': (v) => parseDuration(v, 'handshake-timeout'),
  'frame-timeout': (v) => parseDuration(v, 'frame-timeout'),
};

function bad(what: string): never {
  throw new UsageError(`must be ${what}`);
}

/** The settings of FILE, by key (values as written); throws a UsageError naming the file, line and key. */
export function loadAgentConfig(file: string): Record<string, string> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(
      `agent config ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? err})`,
    );
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number | undefined) =>
    offset === undefined ? '' : `, line ${lines.linePos(offset).line}`;
  const first = doc.errors[0];
  if (first)
    throw new UsageError(
      `agent config ${file}${at(first.pos[0])}: not valid YAML (${first.message.split('\n')[0]})`,
    );
  const out: Record<string, string> = {};
  if (doc.contents === null) return out; // an empty file: every default
  if (!isMap(doc.contents))
    throw new UsageError(
      `agent config ${file}: must be a mapping of keys to values (listen: 0.0.0.0:7070 ...)`,
    );
  for (const pair of doc.contents.items) {
    const keyNode = pair.key;
    const key = isScalar(keyNode) ? String(keyNode.value) : '';
    const where = `agent config ${file}${at(isScalar(keyNode) ? keyNode.range?.[0] : undefined)}`;
    const check = AGENT_CONFIG_KEYS[key];
    if (!check)
      throw new UsageError(
        `${where}: unknown key "${key}"; known keys: ${Object.keys(AGENT_CONFIG_KEYS).join(', ')}`,
      );
    const v = pair.value;
    if (!isScalar(v) || v.value === null || typeof v.value === 'object')
      throw new UsageError(`${where}: key "${key}" needs a single value`);
    const value = String(v.value);
    try {
      check(value);
    } catch (err) {
      throw new UsageError(`${where}: key "${key}": ${(err as Error).message}`);
    }
    out[key] = value;
  }
  return out;
}
