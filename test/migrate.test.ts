// precog migrate: live migration of real containers between the test hosts with CRIU, and every way it can fail
// before the destination runs the container (the source must keep running). Needs root and its own testbed.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { AGENT, hostPath, readState, type TestbedState } from '../src/runtime/testbed.ts';
import { CONTAINERS_DIR, NamespaceRuntime, type ContainerInfo } from '../src/runtime/container.ts';
import { must, precog, precogAsync, type Ran } from './support/cli.ts';
import { ps, find, inContainer } from './support/containers.ts';
import { sharedTestbed } from './support/testbed.ts';
import { startServiceClient, type ServiceClient } from '../src/runtime/svcclient.ts';

const cli = (...args: string[]): Ran => precog(args);
const IS_ROOT = process.getuid?.() === 0;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** memcheck's status: "ok <checks> <rewrites> <pages>" or "CORRUPT ...". */
function memcheck(name: string): { ok: boolean; checks: number; rewrites: number; line: string } {
  const c = find(name);
  assert.ok(c && c.status === 'running', `${name} is running`);
  const line = inContainer(c, 'cat /tmp/memcheck.status').trim();
  const [word, checks, rewrites] = line.split(' ');
  return { ok: word === 'ok', checks: Number(checks), rewrites: Number(rewrites), line };
}

async function waitChecks(name: string, after: number): Promise<ReturnType<typeof memcheck>> {
  let s = memcheck(name);
  for (let i = 0; i < 50 && s.ok && s.checks <= after + 2; i++) {
    await sleep(200);
    s = memcheck(name);
  }
  return s;
}

function startMemcheck(name: string, host: string, mib: number, rate = 5): void {
  must(
    cli(
      'run',
      '--host',
      host,
      '--name',
      name,
      '--memory',
      `${mib + 128}M`,
      '--',
      'python3',
      '/opt/precog/workloads/memcheck.py',
      '--size',
      String(mib),
      '--rate',
      String(rate),
    ),
    'run memcheck',
  );
}

async function waitReady(name: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const c = find(name);
    if (c?.status === 'running') {
      const r = spawnSync(
        'nsenter',
        ['-t', String(c.machinePid!.pid), '-m', '--', 'cat', '/tmp/memcheck.status'],
        {
          encoding: 'utf8',
        },
      );
      if (r.status === 0 && r.stdout.startsWith('ok')) return;
    }
    await sleep(100);
  }
  assert.fail(`${name} never reported a memory check`);
}

/** What the destination agent keeps: must be empty after any failed migration. */
function agentLeftovers(state: TestbedState, host: string): string[] {
  const dir = hostPath(
    state.hosts.find((h) => h.name === host)!,
    AGENT.stateDir,
  );
  return existsSync(dir) ? readdirSync(dir) : [];
}

/**
 * Waits until the destination agent holds a session (the migration is under way), so that an interruption lands
 * mid-migration and not while precog is still starting (slow on a loaded machine).
 */
async function waitSession(state: TestbedState, host: string): Promise<void> {
  for (let i = 0; i < 150 && agentLeftovers(state, host).length === 0; i++) await sleep(100);
  assert.ok(agentLeftovers(state, host).length > 0, `no migration session reached host ${host}`);
  await sleep(500);
}

/** The PID of a process on this machine whose command line (NUL-separated) matches, or 0. */
function processMatching(re: RegExp): number {
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (re.test(readFileSync(`/proc/${e}/cmdline`, 'latin1'))) return Number(e);
    } catch {
      // gone meanwhile
    }
  }
  return 0;
}

/** Host b's side of the link at 40 Mbit/s (a 64 MiB migration takes about 15 s); undone by fastLinkFromB. */
function slowLinkFromB(): void {
  const tbf = ['tbf', 'rate', '40mbit', 'burst', '32kbit', 'latency', '50ms'];
  must(cli('testbed', 'exec', 'b', '--', 'tc', 'qdisc', 'replace', 'dev', 'eth0', 'root', ...tbf), 'tc');
}

function fastLinkFromB(): void {
  cli('testbed', 'exec', 'b', '--', 'tc', 'qdisc', 'del', 'dev', 'eth0', 'root');
}

/** `redis-cli client list` inside a container (its mount and network namespaces). */
function redisClients(c: ContainerInfo): string {
  const r = spawnSync(
    'nsenter',
    ['-t', String(c.machinePid!.pid), '-m', '-n', '--', 'redis-cli', 'client', 'list'],
    {
      encoding: 'utf8',
    },
  );
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

/**
 * After a move of mc from b to a that was stopped before the destination took over: mc goes on at b from its
 * state, every memory check intact, and a's agent keeps nothing of it.
 */
async function sourceWentOn(state: TestbedState, before: { checks: number }): Promise<void> {
  const s = await waitChecks('mc', before.checks);
  assert.ok(s.ok && s.checks > before.checks, s.line);
  assert.equal(find('mc')!.host, 'b');
  for (let i = 0; i < 50 && agentLeftovers(state, 'a').length > 0; i++) await sleep(200);
  assert.deepEqual(agentLeftovers(state, 'a'), []);
}

function hostsOf(name: string, state: TestbedState): string[] {
  return state.hosts.filter((h) => existsSync(hostPath(h, CONTAINERS_DIR, name))).map((h) => h.name);
}

describe('migrate flags', () => {
  test('bad flags are usage errors (exit 2) naming the flag', () => {
    const cases: [string[], RegExp][] = [
      [
        ['migrate', 'x', '--from', 'a', '--to', 'b', '--strategy', 'postcopy', '--restore', 'full'],
        /--restore full/,
      ],
      [
        ['migrate', 'x', '--from', 'a', '--to', 'b', '--strategy', 'hybrid', '--dump-via', 'page-server'],
        /--dump-via/,
      ],
      [['migrate', 'x', '--from', 'a', '--to', 'a'], /both a/],
      [['migrate', 'x', '--from', 'a', '--to', 'q'], /host/],
      [['migrate', 'x', '--from', 'a', '--to', 'b', '--strategy', 'warp'], /unknown strategy "warp"/],
      [['migrate', 'x', '--from', 'a', '--to', 'b', '--link-timeout', 'soon'], /--link-timeout/],
      [['migrate', 'x', '--from', 'a', '--to', 'b', '--codec', 'zip'], /--codec zip/],
      [['migrate', 'x', '--to', 'b'], /--from/],
    ];
    for (const [args, re] of cases) {
      const r = cli(...args);
      assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
      assert.match(r.stderr, re, args.join(' '));
    }
  });
});

const skip = !IS_ROOT
  ? 'needs root: containers live in the test hosts'
  : readState()
    ? 'a testbed is already up (someone else may be using it); not touching it'
    : false;

describe('live migration of containers with CRIU', { skip }, () => {
  let state: TestbedState;

  sharedTestbed({ rate: 'none' }, (s) => {
    state = s;
  });

  test("the hosts share nothing but the link: b's agent state is not visible from a", () => {
    const marker = `only-on-b-${process.pid}`;
    must(cli('testbed', 'exec', 'b', '--', 'touch', `${AGENT.stateDir}/${marker}`), 'touch in b');
    try {
      assert.equal(cli('testbed', 'exec', 'b', '--', 'test', '-e', `${AGENT.stateDir}/${marker}`).code, 0);
      // Everything host a can see (its own mounts only; the repository stands in for the installed software).
      const seen = must(
        cli(
          'testbed',
          'exec',
          'a',
          '--',
          'sh',
          '-c',
          `find / \\( -path /proc -o -path /sys -o -path /opt/precog \\) -prune -o -name ${marker} -print; ` +
            `grep -c 'testbed/b' /proc/self/mountinfo || true`,
        ),
        'find in a',
      );
      assert.equal(seen.stdout.trim(), '0', `host a sees b's files or mounts: ${seen.stdout}`);
      // precog migrate runs in the probe namespace and reaches the agents over their TLS port alone: it has no
      // route to the migration link, and the hosts' files are not where it runs.
      const route = spawnSync('ip', ['-n', state.probe!.netns, 'route', 'get', '10.213.77.2'], {
        encoding: 'utf8',
      });
      assert.notEqual(route.status, 0, `the probe namespace reaches the migration link: ${route.stdout}`);
    } finally {
      cli('testbed', 'exec', 'b', '--', 'rm', '-f', `${AGENT.stateDir}/${marker}`);
    }
  });

  test('precopy a -> b: every page arrives intact, the process goes on from its state, files come along', async () => {
    startMemcheck('mc', 'a', 64);
    await waitReady('mc');
    const src = find('mc')!;
    inContainer(src, 'mkdir -p /data && echo "written before the move" > /data/note.txt');
    const before = memcheck('mc');
    const r = must(
      cli('migrate', 'mc', '--from', 'a', '--to', 'b', '--strategy', 'precopy', '--json'),
      'migrate',
    );
    const report = JSON.parse(r.stdout) as Record<string, number | string>;
    process.stdout.write(`# precopy 64 MiB: ${JSON.stringify({ ...report, rounds: undefined })}\n`);
    assert.equal(report.to, 'b');
    assert.ok(Number(report.liveRounds) >= 1, 'live rounds ran');
    // The final copy is what changed, not the whole memory: most pages CRIU dumped were already there.
    assert.ok(Number(report.pagesUnchanged) > 10_000, `pages already at b: ${report.pagesUnchanged}`);
    assert.ok(Number(report.pagesFinal) < 5_000, `pages sent stopped: ${report.pagesFinal}`);
    assert.ok(Number(report.downtimeMs) < Number(report.totalMs));
    // The stop dumped lazily (the default for this runtime): CRIU left the anonymous memory, precog read it.
    assert.equal(report.dumpVia, 'lazy');
    assert.equal(report.dumpFallback, null, 'the lazy route was not refused');
    const steps = report.lazyDumpSteps as unknown as Record<string, number>;
    assert.ok(steps.memoryMs > 0 && steps.criuMs > 0, `lazy dump steps: ${JSON.stringify(steps)}`);
    // Restored lazily: most pages were copied in by criu lazy-pages after the container ran (checked below).
    assert.equal(report.restoreMode, 'lazy');
    assert.ok(Number(report.lazyPages) > 10_000, `pages copied in lazily: ${report.lazyPages}`);
    const c = find('mc')!;
    assert.equal(c.host, 'b');
    assert.deepEqual(hostsOf('mc', state), ['b'], 'the source is removed');
    assert.equal(existsSync(`/proc/${src.machinePid!.pid}`), false, 'the source process is gone');
    const afterMove = await waitChecks('mc', before.checks);
    assert.ok(afterMove.ok, `memory check after the move: ${afterMove.line}`);
    assert.ok(afterMove.checks > before.checks, `checks went on: ${before.checks} -> ${afterMove.checks}`);
    assert.ok(afterMove.rewrites > before.rewrites, 'rewrites went on from where they were');
    assert.equal(inContainer(c, 'cat /data/note.txt'), 'written before the move\n');
    assert.deepEqual(agentLeftovers(state, 'b'), [], 'the agent keeps nothing once restored');
  });

  test('the lazy dump probe: CRIU in a test host dumps a throwaway process lazily; nothing of it is left', async () => {
    const rt = new NamespaceRuntime();
    const t0 = performance.now();
    assert.equal(await rt.probeLazyDump('b'), null, 'CRIU 4.2 in the test hosts dumps lazily');
    process.stdout.write(`# lazy dump probe in b: ${Math.round(performance.now() - t0)} ms\n`);
    // Its work directory, and its process ("sleep 300"; the host's own sleep is another).
    const leftovers =
      'ls /var/lib/precog/checkpoints 2>/dev/null; ' +
      'for p in /proc/[0-9]*; do tr "\\0" " " < $p/cmdline 2>/dev/null; echo; done | grep -x "sleep 300 " || true';
    const left = cli(...['testbed', 'exec', 'b', '--', 'sh', '-c'], leftovers);
    assert.equal(left.stdout.trim(), '', `probe leftovers in b: ${left.stdout}`);
  });

  test('iterpredict b -> a (lazy dump) and cold a -> b (a full local dump): the same container moves on intact', async () => {
    for (const [from, to, strategy, route] of [
      ['b', 'a', 'iterpredict', 'lazy'],
      ['a', 'b', 'cold', 'images'],
    ]) {
      const before = memcheck('mc');
      const argv = `migrate mc --from ${from} --to ${to} --strategy ${strategy} --dump-via ${route} --json`;
      const r = must(cli(...argv.split(' ')), strategy);
      const report = JSON.parse(r.stdout) as Record<string, number | string>;
      process.stdout.write(
        `# ${strategy} (${route}): downtime ${Math.round(Number(report.downtimeMs))} ms, total ${Math.round(Number(report.totalMs))} ms, ${report.bytesTotal} B\n`,
      );
      assert.equal(report.dumpVia, route);
      if (strategy === 'cold') assert.equal(report.liveRounds, 0);
      const s = await waitChecks('mc', before.checks);
      assert.ok(s.ok && s.checks > before.checks, `${strategy}: ${s.line}`);
      assert.equal(find('mc')!.host, to);
    }
  });

  test('postcopy b -> a and hybrid a -> b: the container runs before its pages arrive; every page arrives intact', async () => {
    // mc is on b after the cold move above.
    for (const [from, to, strategy] of [
      ['b', 'a', 'postcopy'],
      ['a', 'b', 'hybrid'],
    ]) {
      const before = memcheck('mc');
      const r = must(
        cli('migrate', 'mc', '--from', from, '--to', to, '--strategy', strategy, '--json'),
        strategy,
      );
      const report = JSON.parse(r.stdout) as {
        downtimeMs: number;
        totalMs: number;
        liveRounds: number;
        pagesFinal: number;
        dumpVia: string;
        postcopy: {
          pages: number;
          faults: number;
          faultLatencyMedianMs: number | null;
          degradedMs: number;
        } | null;
      };
      process.stdout.write(
        `# ${strategy}: downtime ${Math.round(report.downtimeMs)} ms, total ${Math.round(report.totalMs)} ms, ` +
          `post-copy ${JSON.stringify(report.postcopy)}\n`,
      );
      assert.ok(report.postcopy, 'a post-copy report');
      // The stop dumped lazily: the pages that follow the switchover are read from the frozen source as they go.
      assert.equal(report.dumpVia, 'lazy');
      // The memory (64 MiB, 16k pages) came after the switchover, through the lazy page server; only the pages
      // criu restore copies itself went before it.
      if (strategy === 'postcopy') {
        assert.equal(report.liveRounds, 0);
        assert.ok(report.postcopy.pages > 10_000, `pages after the switchover: ${report.postcopy.pages}`);
        assert.ok(report.pagesFinal < 2_000, `pages sent before the switchover: ${report.pagesFinal}`);
      } else assert.ok(report.liveRounds >= 1, 'hybrid: pre-copy rounds first');
      assert.ok(report.postcopy.degradedMs > 0 && report.downtimeMs < report.totalMs);
      const s = await waitChecks('mc', before.checks);
      assert.ok(s.ok && s.checks > before.checks, `${strategy}: ${s.line}`);
      assert.ok(s.rewrites > before.rewrites, `${strategy}: rewrites went on`);
      assert.deepEqual(hostsOf('mc', state), [to], 'the source is removed once every page is in');
      assert.deepEqual(agentLeftovers(state, to), [], 'the agent keeps nothing afterwards');
    }
  });

  test('redis: keys written before the move are read back after it', async () => {
    must(
      cli(
        'run',
        '--host',
        'a',
        '--name',
        'redis',
        '--',
        'redis-server',
        '--save',
        '',
        '--appendonly',
        'no',
        '--protected-mode',
        'no',
      ),
      'run redis',
    );
    const redis = (host: string, addr: string, ...args: string[]) =>
      must(
        cli('testbed', 'exec', host, '--', 'redis-cli', '-h', addr, ...args),
        `redis-cli ${args.join(' ')}`,
      ).stdout.trim();
    for (
      let i = 0;
      i < 50 && cli('testbed', 'exec', 'a', '--', 'redis-cli', '-h', '10.213.77.1', 'ping').code !== 0;
      i++
    )
      await sleep(100);
    for (let i = 0; i < 100; i++) redis('a', '10.213.77.1', 'set', `key${i}`, `value${i}`);
    redis('a', '10.213.77.1', 'rpush', 'list', 'x', 'y', 'z');
    must(cli('migrate', 'redis', '--from', 'a', '--to', 'b'), 'migrate redis');
    assert.equal(redis('b', '10.213.77.2', 'get', 'key42'), 'value42');
    assert.equal(redis('b', '10.213.77.2', 'dbsize'), '101');
    assert.equal(redis('b', '10.213.77.2', 'lrange', 'list', '0', '-1'), 'x\ny\nz');
    must(cli('stop', 'redis'), 'stop redis');
  });

  test('a service with its own address: the address and an established TCP connection move with it', async () => {
    // redis in its own network namespace at 10.213.80.21 on the service LAN; one client in the LAN's namespace keeps
    // a single TCP connection and increments a counter back to back while the container moves a -> b (pre-copy)
    // and b -> a (post-copy).
    const address = '10.213.80.21';
    must(
      cli(
        'run',
        '--host',
        'a',
        '--name',
        'svc',
        '--ip',
        address,
        '--',
        'redis-server',
        '--save',
        '',
        '--protected-mode',
        'no',
      ),
      'run svc',
    );
    let client: ServiceClient | undefined;
    for (let i = 0; i < 50 && !client; i++) {
      client = await startServiceClient(state, { address, port: 6379 }).catch(() => undefined);
      if (!client) await sleep(100);
    }
    assert.ok(client, `no redis answers at ${address}:6379 from the LAN`);
    const lanPortOf = (mac: string): string => {
      const fdb = spawnSync('ip', ['netns', 'exec', 'precog-lan', 'bridge', 'fdb', 'show', 'br', 'lan0'], {
        encoding: 'utf8',
      }).stdout;
      return (
        fdb
          .split('\n')
          .find((l) => l.startsWith(mac + ' '))
          ?.split(' ')[2] ?? '(not learned)'
      );
    };
    const macOf = (name: string): string => {
      const out = spawnSync(
        'nsenter',
        [`--net=/proc/${find(name)!.machinePid!.pid}/ns/net`, 'ip', '-o', 'link', 'show', 'eth0'],
        {
          encoding: 'utf8',
        },
      ).stdout;
      return /link\/ether (\S+)/.exec(out)?.[1] ?? '';
    };
    const mac = macOf('svc');
    assert.match(mac, /^[0-9a-f:]{17}$/);
    try {
      for (const [from, to, strategy] of [
        ['a', 'b', 'precopy'],
        ['b', 'a', 'postcopy'],
      ]) {
        const n0 = client.replies();
        await sleep(500);
        assert.ok(client.replies() > n0, `the client gets answers on ${from} before the move`);
        const r = await precogAsync(['migrate', 'svc', '--from', from, '--to', to, '--strategy', strategy])
          .done;
        assert.equal(r.code, 0, r.stderr);
        const c = find('svc')!;
        assert.equal(c.host, to);
        assert.equal(c.network?.address, address);
        assert.equal(macOf('svc'), mac, 'the MAC moved with the address');
        // The gratuitous ARP told the LAN's bridge where the address is now.
        assert.equal(lanPortOf(mac), `up-${to}`);
        // Nothing of the container's network is left on the source host.
        const left = spawnSync('ip', ['-n', `precog-${from}`, 'link', 'show', c.network!.hostIface]);
        assert.notEqual(left.status, 0, `${c.network!.hostIface} is gone from ${from}`);
        const n1 = client.replies();
        await sleep(500);
        assert.ok(client.replies() > n1, `the client gets answers from ${to} after the move`);
        // The server side holds the same connection: redis on the destination lists the client's port.
        const clients = redisClients(c);
        assert.match(clients, new RegExp(`addr=10\\.213\\.80\\.254:\\d+ `));
      }
      // Still the client's first connection, on the container's second host.
      const port = client.port;
      assert.match(
        redisClients(find('svc')!),
        new RegExp(`addr=10\\.213\\.80\\.254:${port} `),
        'the same connection',
      );
    } finally {
      const r = await client.stop();
      process.stdout.write(
        `# service client: ${r.replies} requests, ${r.failed} failed, ${r.connections} connection(s), ` +
          `longest pause ${r.maxPauseMs.toFixed(0)} ms\n`,
      );
      assert.deepEqual(r.errors, []);
      assert.equal(r.failed, 0);
      assert.equal(r.connections, 1, 'one TCP connection the whole time');
      assert.equal(r.firstPort, r.lastPort);
      assert.ok(r.sequential, 'every reply is the previous one + 1: nothing lost, nothing applied twice');
      assert.equal(r.last - r.first + 1, r.replies);
    }
  });

  test('a service move that fails after its network was locked: the source answers again, the connection lives', async () => {
    // Cold: the dump (and the lock) comes first, then host b's agent runs out of disk space.
    const address = '10.213.80.21';
    const client = await startServiceClient(state, { address, port: 6379 });
    must(
      cli(
        'testbed',
        'exec',
        'b',
        '--',
        'mount',
        '-t',
        'tmpfs',
        '-o',
        'size=1m',
        'precog-test-full',
        AGENT.stateDir,
      ),
      'mount tmpfs',
    );
    try {
      await sleep(300);
      const r = await precogAsync(['migrate', 'svc', '--from', 'a', '--to', 'b', '--strategy', 'cold']).done;
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /source keeps running/);
      // Its TCP retransmissions backed off while the network was locked (200, 400, 800 ms...): the next one, and
      // with it the answer, may come more than a second after the unlock (a CI run saw 1.7 s).
      const n = client.replies();
      for (let i = 0; i < 50 && client.replies() <= n; i++) await sleep(100);
      assert.ok(client.replies() > n, 'the client gets answers from a again (within 5 s)');
      assert.equal(find('svc')!.host, 'a');
    } finally {
      cli('testbed', 'exec', 'b', '--', 'umount', AGENT.stateDir);
      const r = await client.stop();
      process.stdout.write(`# after the failed move: longest pause ${r.maxPauseMs.toFixed(0)} ms\n`);
      assert.equal(r.failed, 0);
      assert.equal(r.connections, 1);
      assert.ok(r.sequential);
    }
    must(cli('stop', 'svc'), 'stop svc');
  });

  test('a CRIU error (an established TCP connection to outside) leaves the source running', async () => {
    // The container holds a TCP connection to agent a: CRIU refuses to dump it without --tcp-established.
    must(
      cli(
        'run',
        '--host',
        'a',
        '--name',
        'tcp',
        '--',
        'python3',
        '-c',
        "import os,socket,time; s=socket.create_connection(('10.213.77.1',7070)); open('/tmp/up','w').write('1')\nn=0\nwhile True:\n n+=1; open('/tmp/n.t','w').write(str(n)); os.rename('/tmp/n.t','/tmp/n'); time.sleep(0.05)",
      ),
      'run tcp',
    );
    await sleep(1000);
    const r = cli('migrate', 'tcp', '--from', 'a', '--to', 'b');
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /source keeps running/);
    assert.match(r.stderr, /criu|CRIU/);
    process.stdout.write(`# ${r.stderr.split('\n')[0]}\n`);
    const c = find('tcp')!;
    assert.equal(c.host, 'a');
    assert.equal(c.status, 'running');
    // The counter is renamed into place: a read never sees it half written (a truncated file read as 0 once).
    const n0 = Number(inContainer(c, 'cat /tmp/n'));
    await sleep(300);
    const n1 = Number(inContainer(c, 'cat /tmp/n'));
    assert.ok(n1 > n0, `the source goes on: ${n0} -> ${n1}`);
    assert.deepEqual(hostsOf('tcp', state), ['a']);
    assert.deepEqual(agentLeftovers(state, 'b'), []);
    must(cli('stop', 'tcp'), 'stop');
  });

  test('destination out of disk space: the source thaws and goes on, the destination keeps nothing', async () => {
    // memcheck mc is on b now: move it to a, whose agent directory is a 4 MiB tmpfs for the test.
    must(
      cli(
        'testbed',
        'exec',
        'a',
        '--',
        'mount',
        '-t',
        'tmpfs',
        '-o',
        'size=4m',
        'precog-test-full',
        AGENT.stateDir,
      ),
      'mount tmpfs',
    );
    try {
      const before = memcheck('mc');
      const r = cli('migrate', 'mc', '--from', 'b', '--to', 'a');
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /out of disk space/);
      assert.match(r.stderr, /source keeps running/);
      const s = await waitChecks('mc', before.checks);
      assert.ok(s.ok && s.checks > before.checks, s.line);
      assert.equal(find('mc')!.host, 'b');
      assert.equal(must(cli('testbed', 'exec', 'a', '--', 'ls', '-A', AGENT.stateDir), 'ls').stdout, '');
    } finally {
      cli('testbed', 'exec', 'a', '--', 'umount', AGENT.stateDir);
    }
  });

  test('a cut link: the migration gives up after --link-timeout, the source goes on', async () => {
    // Slow the link so that the migration is still running when the link goes down.
    slowLinkFromB();
    const before = memcheck('mc');
    const m = precogAsync(['migrate', 'mc', '--from', 'b', '--to', 'a', '--link-timeout', '3s']);
    await waitSession(state, 'a');
    must(cli('testbed', 'exec', 'b', '--', 'ip', 'link', 'set', 'eth0', 'down'), 'link down');
    let r: Ran;
    try {
      r = await m.done;
    } finally {
      must(cli('testbed', 'exec', 'b', '--', 'ip', 'link', 'set', 'eth0', 'up'), 'link up');
      fastLinkFromB();
    }
    assert.equal(r.code, 1, r.stderr + r.stdout);
    assert.match(r.stderr, /no traffic on the link/);
    assert.match(r.stderr, /source keeps running/);
    const s = await waitChecks('mc', before.checks);
    assert.ok(s.ok && s.checks > before.checks, s.line);
    assert.equal(find('mc')!.host, 'b');
    // Once the link is back, the source's close reaches the destination, which drops what it had.
    for (let i = 0; i < 100 && agentLeftovers(state, 'a').length > 0; i++) await sleep(200);
    assert.deepEqual(agentLeftovers(state, 'a'), []);
  });

  test('link lost during post-copy: reported, both copies stop, the source keeps every page; --resume finishes the move', async () => {
    // mc is on b. The link is slowed so that post-copy is still pushing when it goes down.
    slowLinkFromB();
    const m = precogAsync([
      'migrate',
      'mc',
      '--from',
      'b',
      '--to',
      'a',
      '--strategy',
      'postcopy',
      '--link-timeout',
      '3s',
    ]);
    let r: Ran;
    try {
      // Down once the container runs at a (the switchover is done, pages are still coming).
      for (let i = 0; i < 300 && !ps().some((c) => c.name === 'mc' && c.host === 'a'); i++) await sleep(100);
      assert.ok(
        ps().some((c) => c.name === 'mc' && c.host === 'a'),
        'the container was restored at a',
      );
      must(cli('testbed', 'exec', 'b', '--', 'ip', 'link', 'set', 'eth0', 'down'), 'link down');
      r = await m.done;
    } finally {
      must(cli('testbed', 'exec', 'b', '--', 'ip', 'link', 'set', 'eth0', 'up'), 'link up');
      fastLinkFromB();
    }
    assert.equal(r.code, 1, r.stderr + r.stdout);
    assert.match(r.stderr, /post-copy failed after the container resumed on a/);
    assert.match(r.stderr, /cannot continue anywhere/);
    assert.match(r.stderr, /the source on b stays frozen with every page in its memory/);
    // The destination's agent freezes its copy itself once it finds the source lost (within the link timeout).
    let copies = ps().filter((c) => c.name === 'mc');
    for (let i = 0; i < 100 && copies.some((c) => c.status !== 'frozen'); i++) {
      await sleep(100);
      copies = ps().filter((c) => c.name === 'mc');
    }
    assert.deepEqual(
      copies.map((c) => `${c.host}:${c.status}`).sort(),
      ['a:frozen', 'b:frozen'],
      'both copies are stopped, none runs on',
    );
    // The frozen source still holds its memory: memcheck's pages are all there (the process exists, frozen).
    const src = copies.find((c) => c.host === 'b')!;
    assert.ok(existsSync(`/proc/${src.machinePid!.pid}`), 'the source process is kept');
    assert.match(r.stderr, /precog migrate mc --from b --to a --resume/);
    // The link is back: the post-copy is taken up again from the frozen source, and the copy at a runs on with
    // every page (memcheck verifies its whole memory), before a's agent has even noticed the old session died.
    const resumed = await precogAsync(['migrate', 'mc', '--from', 'b', '--to', 'a', '--resume', '--json'])
      .done;
    assert.equal(resumed.code, 0, resumed.stderr);
    const rep = JSON.parse(resumed.stdout) as { pagesMissing: number; lazyMs: number };
    process.stdout.write(`# resumed: ${resumed.stdout.replace(/\s+/g, ' ')}\n`);
    assert.ok(rep.pagesMissing > 0, 'pages were still missing at a');
    const after = ps().filter((c) => c.name === 'mc');
    assert.deepEqual(
      after.map((c) => `${c.host}:${c.status}`),
      ['a:running'],
      'the copy at a runs; the source is gone',
    );
    const before = memcheck('mc');
    const s2 = await waitChecks('mc', before.checks);
    assert.ok(s2.ok && s2.checks > before.checks, `memory intact and the process goes on: ${s2.line}`);
    assert.ok(!existsSync(`/proc/${src.machinePid!.pid}`), 'the source process is gone');
    assert.deepEqual(hostsOf('mc', state), ['a']);
    // A second --resume has nothing to take up: a usage error.
    const again = cli('migrate', 'mc', '--from', 'b', '--to', 'a', '--resume');
    assert.equal(again.code, 2, again.stderr);
    assert.match(again.stderr, /no interrupted post-copy|no container/);
    // a's agent served the resumed session and is still up (the next tests migrate to it).
    must(cli('testbed', 'exec', 'a', '--', 'pgrep', '-f', 'precog agent'), "a's agent is alive");
    // Leave the testbed as the next tests expect it: mc on b.
    must(cli('migrate', 'mc', '--from', 'a', '--to', 'b'), 'migrate mc back to b');
    await waitReady('mc');
  });

  test('SIGTERM to precog migrate mid-migration: it stops, the source goes on, the destination keeps nothing', async () => {
    slowLinkFromB();
    const before = memcheck('mc');
    const m = precogAsync(['migrate', 'mc', '--from', 'b', '--to', 'a']);
    await waitSession(state, 'a');
    process.kill(m.pid, 'SIGTERM');
    let r: Ran;
    try {
      r = await m.done;
    } finally {
      fastLinkFromB();
    }
    assert.equal(r.code, 1, r.stderr + r.stdout);
    assert.match(r.stderr, /SIGTERM: stopping the migration/);
    assert.match(r.stderr, /source keeps running/);
    await sourceWentOn(state, before);
    assert.equal(find('mc')!.status, 'running');
  });

  test('from another shell: precog job list shows the running migration, precog job cancel stops it', async () => {
    slowLinkFromB();
    const before = memcheck('mc');
    const m = precogAsync(['migrate', 'mc', '--from', 'b', '--to', 'a']);
    let r: Ran;
    try {
      await waitSession(state, 'a');
      const list = must(cli('job', 'list', '--on', 'b', '--json'), 'job list');
      const jobs = JSON.parse(list.stdout) as { container: string; to: string; phase: string }[];
      assert.deepEqual(
        jobs.map((j) => `${j.container}->${j.to}`),
        ['mc->a'],
        `the source agent lists the move: ${list.stdout}`,
      );
      assert.match(must(cli('job', 'list', '--on', 'a'), 'job list a').stdout, /no migration runs there/);
      must(cli('job', 'cancel', 'mc', '--on', 'b'), 'job cancel');
      r = await m.done;
    } finally {
      fastLinkFromB();
    }
    assert.equal(r.code, 1, r.stderr + r.stdout);
    assert.match(r.stderr, /cancelled by precog job cancel/);
    assert.match(r.stderr, /source keeps running on b/);
    await sourceWentOn(state, before);
    // Nothing to cancel any more: a usage error naming it.
    const again = cli('job', 'cancel', 'mc', '--on', 'b');
    assert.equal(again.code, 2, again.stderr);
    assert.match(again.stderr, /no migration of a container named "mc" runs on this host/);
  });

  test('the lazy copy-in fails (its daemon stops): the restored copy is removed, the source thaws and goes on', async () => {
    const before = memcheck('mc');
    const m = precogAsync(['migrate', 'mc', '--from', 'b', '--to', 'a'], { PRECOG_LAZY_TIMEOUT_MS: '3000' });
    // The daemon lives from just before criu restore until the last page is in: stop it once it listens (the
    // restore hands it the container's userfaultfd there), so that the restore succeeds and the copy-in cannot.
    const socket = hostPath(
      state.hosts[0],
      CONTAINERS_DIR,
      'mc',
      'checkpoint',
      'images',
      'lazy-pages.socket',
    );
    let daemon = 0;
    for (let i = 0; i < 6000 && !daemon; i++) {
      if (existsSync(socket)) daemon = processMatching(/^criu\0lazy-pages\0/);
      if (!daemon) await sleep(5);
    }
    assert.ok(daemon, 'the lazy-pages daemon was seen listening');
    process.kill(daemon, 'SIGSTOP');
    const r = await m.done;
    assert.equal(r.code, 1, r.stderr + r.stdout);
    // Stopped before criu restore has finished, the restore itself waits on the daemon (the restorer faults on a lazy
    // page) and times out; stopped after, the copy-in times out. Either way the migration is undone.
    assert.match(r.stderr, /lazy-pages did not copy every page in|criu restore timed out/);
    assert.doesNotMatch(
      r.stderr,
      /no traffic on the link/,
      'the destination kept the link alive while it waited',
    );
    assert.match(r.stderr, /source keeps running on b/);
    assert.equal(existsSync(`/proc/${daemon}`), false, 'the stopped daemon went with the removed copy');
    const s = await waitChecks('mc', before.checks);
    assert.ok(s.ok && s.checks > before.checks, s.line);
    assert.deepEqual(hostsOf('mc', state), ['b'], 'only the source is left');
  });

  test('the source agent stopped (SIGTERM) mid-migration: it cancels the move, the source goes on', async () => {
    slowLinkFromB();
    const before = memcheck('mc');
    const m = precogAsync(['migrate', 'mc', '--from', 'b', '--to', 'a']);
    let r: Ran;
    try {
      await waitSession(state, 'a');
      must(cli('testbed', 'exec', 'b', '--', 'pkill', '-TERM', '-f', 'precog agent'), 'SIGTERM to agent b');
      r = await m.done;
    } finally {
      fastLinkFromB();
      // b's agent back, as its service manager would start it again.
      must(
        cli(
          'testbed',
          'exec',
          'b',
          '--',
          'sh',
          '-c',
          `setsid /opt/precog/bin/precog agent --config ${AGENT.config} >>${AGENT.log} 2>&1 </dev/null &`,
        ),
        'restart agent b',
      );
    }
    assert.equal(r.code, 1, r.stderr + r.stdout);
    assert.match(r.stderr, /the source agent is stopping/);
    assert.match(r.stderr, /source keeps running on b/);
    await sourceWentOn(state, before);
    for (let i = 0; i < 100 && cli('job', 'list', '--on', 'b').code !== 0; i++) await sleep(100);
    must(cli('job', 'list', '--on', 'b'), "b's agent is back");
  });

  test('the destination agent dies mid-migration: the source goes on', async () => {
    slowLinkFromB();
    const before = memcheck('mc');
    const m = precogAsync(['migrate', 'mc', '--from', 'b', '--to', 'a']);
    await waitSession(state, 'a');
    // Agent a: found by its command line among the processes of host a's PID namespace.
    const killed = cli('testbed', 'exec', 'a', '--', 'pkill', '-KILL', '-f', 'precog agent');
    const agentLog = hostPath(state.hosts[0], AGENT.log);
    assert.equal(
      killed.code,
      0,
      `agent a was not running; its log ends:\n${existsSync(agentLog) ? readFileSync(agentLog, 'utf8').slice(-3000) : '(none)'}`,
    );
    let r: Ran;
    try {
      r = await m.done;
    } finally {
      fastLinkFromB();
    }
    assert.equal(r.code, 1, r.stderr + r.stdout);
    assert.match(r.stderr, /source keeps running/);
    assert.match(r.stderr, /closed the connection|ECONNRESET|reset/);
    const s = await waitChecks('mc', before.checks);
    assert.ok(s.ok && s.checks > before.checks, s.line);
    assert.equal(find('mc')!.host, 'b');
  });
});
