// The external downtime probe (src/runtime/probe.ts): the gap analysis runs everywhere; the probe itself needs root
// and its own testbed (the probe namespace precog-probe; skipped when a testbed is already up).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, test } from 'node:test';
import { defaultRuntime } from '../src/runtime/container.ts';
import { analyzeProbe, startProbe, type ProbeSample } from '../src/runtime/probe.ts';
import { type TestbedState } from '../src/runtime/testbed.ts';
import { UsageError } from '../src/util/errors.ts';
import { must, precog, type Ran } from './support/cli.ts';
import { sharedTestbed, testbedSkip } from './support/testbed.ts';

const cli = (...args: string[]): Ran => precog(args);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs a tool on this machine (not in a host). */
function tool(cmd: string, args: string[]): Ran {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Answers every 2 ms from `host`, counting up from `value`, over [from, to). */
function answers(host: string, from: number, to: number, value: number): ProbeSample[] {
  const out: ProbeSample[] = [];
  for (let t = from; t < to; t += 2) out.push({ t, host, value: value++ });
  return out;
}

describe('probe gap analysis', () => {
  test('the longest silence, across hosts, with the answers around it', () => {
    // a answers until 1000, b from 1350 on with a higher value: a migration with 350 ms of downtime.
    const s = [...answers('b', 1350, 1500, 600), ...answers('a', 0, 1000, 0)];
    const r = analyzeProbe(s, 1500);
    assert.equal(r.downtimeMs, 352);
    assert.deepEqual(r.lastBefore, { t: 998, host: 'a', value: 499 });
    assert.deepEqual(r.firstAfter, { t: 1350, host: 'b', value: 600 });
    assert.equal(r.continued, true);
    assert.deepEqual(r.answeredBy, ['a', 'b']);
    assert.equal(r.startedAt, 0);
  });

  test('a restart is not a continuation; a service that never came back counts until the stop', () => {
    const restarted = analyzeProbe([...answers('a', 0, 100, 500), ...answers('b', 300, 400, 0)], 400);
    assert.equal(restarted.downtimeMs, 202);
    assert.equal(restarted.continued, false);
    const gone = analyzeProbe(answers('a', 0, 100, 0), 1000);
    assert.equal(gone.downtimeMs, 1000 - 98);
    assert.equal(gone.firstAfter, null);
    assert.equal(gone.continued, false);
    const none = analyzeProbe([], 5);
    assert.equal(none.downtimeMs, 0);
    assert.deepEqual(none.answeredBy, []);
  });

  test('a testbed state without a probe namespace is refused with a usage error', async () => {
    const state = { hosts: [], probe: undefined } as unknown as TestbedState;
    await assert.rejects(
      startProbe(state),
      (e: Error) => e instanceof UsageError && /no probe/.test(e.message),
    );
  });
});

const skip = testbedSkip('the probe runs in the test hosts');

describe('the probe against containers in the test hosts', { skip }, () => {
  let state: TestbedState;
  const rt = defaultRuntime();

  sharedTestbed({ rate: '100mbit' }, (s) => {
    state = s;
    must(
      cli(
        'run',
        '--host',
        'a',
        '--name',
        'mc',
        '--memory',
        '128M',
        '--',
        'python3',
        '/opt/precog/workloads/memchange.py',
        '--size',
        '16',
        '--rate',
        '5',
      ),
      'run memchange',
    );
  });

  test('the probe namespace reaches each host on its own link, not over the migration link', async () => {
    assert.deepEqual(state.probe?.addresses, { a: '10.213.78.1', b: '10.213.79.2' });
    const ns = state.probe!.netns;
    const ip = (...args: string[]) => must(tool('ip', ['-n', ns, ...args]), `ip ${args.join(' ')}`).stdout;
    assert.match(ip('route', 'get', '10.213.78.1'), /dev to-a/);
    assert.match(ip('route', 'get', '10.213.79.2'), /dev to-b/);
    // No route into the migration subnet: probe traffic cannot cross (or be shaped by) the a<->b link.
    assert.notEqual(tool('ip', ['-n', ns, 'route', 'get', '10.213.77.1']).code, 0);
    // The host ends of the probe links carry no rate limit.
    const tc = tool('tc', ['-n', 'precog-a', 'qdisc', 'show', 'dev', 'probe0']).stdout;
    assert.doesNotMatch(tc, /tbf/);
    const status = JSON.parse(must(cli('testbed', 'status', '--json'), 'status').stdout);
    assert.equal(status.state, 'up');
    assert.deepEqual(status.probe, { netns: ns, netnsExists: true, addresses: state.probe!.addresses });
    assert.deepEqual(status.leftovers, []);
    assert.match(
      must(cli('testbed', 'status'), 'status').stdout,
      /^probe: +netns precog-probe; reaches a at 10\.213\.78\.1, b at 10\.213\.79\.2$/m,
    );
  });

  test('memchange answering without a pause: the longest gap is small', async (t) => {
    const p = await startProbe(state, { port: 7001, intervalMs: 2, awaitReplyMs: 15_000 });
    await sleep(1500);
    const r = await p.stop();
    t.diagnostic(
      `${r.samples.length} answers to ${r.sent} questions in ${(r.stoppedAt - r.startedAt).toFixed(0)} ms, longest gap ${r.downtimeMs.toFixed(1)} ms`,
    );
    assert.deepEqual(r.answeredBy, ['a']);
    assert.ok(r.samples.length > 300, `answers: ${r.samples.length}`);
    assert.ok(r.downtimeMs < 100, `longest gap ${r.downtimeMs} ms`);
    assert.ok(r.samples.at(-1)!.value > r.samples[0].value, 'memchange keeps writing');
    assert.equal(existsSync(`/proc/${p.pid}`), false, 'the probe process is gone after stop');
  });

  test('a 500 ms freeze is measured as about 500 ms of downtime, and the state continued', async (t) => {
    const p = await startProbe(state, { port: 7001, intervalMs: 2, awaitReplyMs: 15_000 });
    await sleep(300);
    const t0 = performance.now();
    await rt.freeze('mc');
    await sleep(500);
    await rt.thaw('mc');
    const frozenMs = performance.now() - t0;
    await sleep(300);
    const r = await p.stop();
    t.diagnostic(
      `frozen for ${frozenMs.toFixed(0)} ms (freeze to thawed, seen by the caller); probe: downtime ${r.downtimeMs.toFixed(1)} ms, ` +
        `last before ${JSON.stringify(r.lastBefore)}, first after ${JSON.stringify(r.firstAfter)}`,
    );
    assert.ok(r.downtimeMs >= 400 && r.downtimeMs <= 900, `downtime ${r.downtimeMs} ms`);
    assert.equal(r.continued, true);
    assert.equal(r.lastBefore?.host, 'a');
    assert.equal(r.firstAfter?.host, 'a');
    assert.ok(r.firstAfter!.value >= r.lastBefore!.value);
  });

  test('counter.py answers with its counter', async () => {
    must(
      cli(
        'run',
        '--host',
        'b',
        '--name',
        'ctr',
        '--',
        'python3',
        '/opt/precog/workloads/counter.py',
        '--port',
        '0',
      ),
      'run counter',
    );
    const p = await startProbe(state, { hosts: ['b'], awaitReplyMs: 15_000 });
    await sleep(600);
    const r = await p.stop();
    must(cli('stop', 'ctr'), 'stop counter');
    assert.deepEqual(r.answeredBy, ['b']);
    const first = r.samples[0].value;
    const last = r.samples.at(-1)!.value;
    assert.ok(
      last >= first + 4 && last <= first + 8,
      `counter ${first} -> ${last} in ~600 ms (+1 per 100 ms)`,
    );
  });
});
