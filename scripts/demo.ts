// The README's first command: builds the two test hosts, starts a counter service and redis in host a, writes
// state into both, live-migrates them to host b with precog's pre-copy and shows that the counter went on from
// where it was and that redis still has its keys; then the same with two Podman containers (precog migrate
// --runtime podman), which are Podman containers in b afterwards (podman ps) and leave nothing in a. Exit 0 only if all of that is true. Needs root.
//
//   npm run demo [-- --strategy iterpredict] [-- --keep]     (--keep: leave the testbed and containers up)
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';

const BIN = new URL('../bin/precog', import.meta.url).pathname;
const { values } = parseArgs({
  options: { strategy: { type: 'string', default: 'precopy' }, keep: { type: 'boolean', default: false } },
});

function run(args: string[], opts: { quiet?: boolean; allowFail?: boolean } = {}): string {
  if (!opts.quiet) process.stdout.write(`$ precog ${args.join(' ')}\n`);
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (!opts.quiet && r.stdout) process.stdout.write(r.stdout.replace(/^/gm, '  ').replace(/\s+$/, '') + '\n');
  if (r.status !== 0 && !opts.allowFail)
    throw new Error(`precog ${args.join(' ')} failed (exit ${r.status})`);
  return r.stdout ?? '';
}

/** One line from the counter service's TCP port, asked from inside a host. */
function askCounter(host: string, address: string): number {
  const py = `import socket; print(socket.create_connection(('${address}', 7000), timeout=2).recv(64).decode().strip())`;
  return Number(run(['testbed', 'exec', host, '--', 'python3', '-c', py], { quiet: true }).trim());
}

/** podman ARGS in a test host: its output. */
const podman = (host: string, args: string[], quiet = true) =>
  run(['testbed', 'exec', host, '--', 'podman', ...args], { quiet }).trim();
const IMAGE = 'localhost/precog-base:latest';

const redis = (host: string, address: string, ...args: string[]) =>
  run(['testbed', 'exec', host, '--', 'redis-cli', '-h', address, ...args], { quiet: true }).trim();

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write(
      'demo: needs root (it builds network namespaces and runs CRIU); run: sudo npm run demo\n',
    );
    return 2;
  }
  const status = run(['testbed', 'status'], { quiet: true });
  if (/^testbed: up/m.test(status)) {
    process.stderr.write(
      'demo: a testbed is already up; bring it down first with: bin/precog testbed down\n',
    );
    return 2;
  }
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  let ok = false;
  try {
    run(['testbed', 'up']);
    run(['run', '--host', 'a', '--name', 'counter', '--', 'python3', '/opt/precog/workloads/counter.py']);
    run([
      'run',
      '--host',
      'a',
      '--name',
      'redis',
      '--',
      'redis-server',
      '--save',
      '',
      '--protected-mode',
      'no',
    ]);
    for (let i = 0; i < 50; i++) {
      if (
        spawnSync(process.execPath, [
          BIN,
          'testbed',
          'exec',
          'a',
          '--',
          'redis-cli',
          '-h',
          '10.213.77.1',
          'ping',
        ]).status === 0
      )
        break;
      await sleep(100);
    }
    await sleep(1000);
    // 1,000 keys in one redis-cli session (one command per line on its stdin).
    const fill =
      'for i in $(seq 1 1000); do echo "SET user:$i name-$i"; done | redis-cli -h 10.213.77.1 >/dev/null';
    run(['testbed', 'exec', 'a', '--', 'sh', '-c', fill], { quiet: true });
    redis('a', '10.213.77.1', 'incrby', 'visits', '41');
    const before = askCounter('a', '10.213.77.1');
    process.stdout.write(
      `counter in host a: ${before}; redis in host a: ${redis('a', '10.213.77.1', 'dbsize')} keys\n`,
    );
    run(['migrate', 'counter', '--from', 'a', '--to', 'b', '--strategy', values.strategy!]);
    run(['migrate', 'redis', '--from', 'a', '--to', 'b', '--strategy', values.strategy!]);
    run(['ps']);
    const after = askCounter('b', '10.213.77.2');
    const keys = Number(redis('b', '10.213.77.2', 'dbsize'));
    const user = redis('b', '10.213.77.2', 'get', 'user:777');
    const visits = redis('b', '10.213.77.2', 'incr', 'visits');
    process.stdout.write(
      `counter in host b: ${after} (was ${before} in a: ${after > before ? 'continued, not reset' : 'RESET'})\n` +
        `redis in host b: ${keys} keys, user:777 = ${user}, visits after one more incr = ${visits}\n`,
    );
    ok = after > before && keys === 1001 && user === 'name-777' && visits === '42';

    // The same with the containers a user already runs: Podman's, by name, moved with --runtime podman. Podman
    // restores in full, so a post-copy strategy given to the demo moves them with pre-copy.
    process.stdout.write('\nPodman containers in host a (the test image is loaded in both hosts):\n');
    const counter = ['/opt/precog/workloads/counter.py', '--port', '0', '--probe-port', '0'];
    const common = ['run', '-d', '--network', 'none', '-v', '/opt/precog/workloads:/opt/precog/workloads:ro'];
    podman('a', [...common, '--name', 'pod-counter', IMAGE, 'python3', ...counter], false);
    podman('a', [...common, '--name', 'pod-redis', IMAGE, 'redis-server', '--save', ''], false);
    const podRedis = (host: string, ...args: string[]) =>
      podman(host, ['exec', 'pod-redis', 'redis-cli', ...args]);
    for (let i = 0; i < 50 && !/PONG/.test(podman('a', ['exec', 'pod-redis', 'redis-cli', 'ping'])); i++)
      await sleep(100);
    const podFill = 'for i in $(seq 1 1000); do echo "SET user:$i name-$i"; done | redis-cli >/dev/null';
    podman('a', ['exec', 'pod-redis', 'sh', '-c', podFill]);
    podRedis('a', 'incrby', 'visits', '41');
    await sleep(1000);
    const podCount = (host: string) =>
      Number(podman(host, ['exec', 'pod-counter', 'cat', '/var/lib/counter/value']));
    const podBefore = podCount('a');
    process.stdout.write(
      `pod-counter in host a: ${podBefore}; pod-redis in host a: ${podRedis('a', 'dbsize')} keys\n`,
    );
    const podStrategy = /^(postcopy|hybrid)/.test(values.strategy!) ? 'precopy' : values.strategy!;
    for (const name of ['pod-counter', 'pod-redis'])
      run(['migrate', name, '--runtime', 'podman', '--from', 'a', '--to', 'b', '--strategy', podStrategy]);
    process.stdout.write('$ precog testbed exec b -- podman ps\n');
    process.stdout.write(podman('b', ['ps']).replace(/^/gm, '  ') + '\n');
    const leftOnA = podman('a', ['ps', '-a', '--format', '{{.Names}}']);
    process.stdout.write(`podman ps -a in host a: ${leftOnA || '(no containers)'}\n`);
    const podAfter = podCount('b');
    const podKeys = Number(podRedis('b', 'dbsize'));
    const podUser = podRedis('b', 'get', 'user:777');
    const podVisits = podRedis('b', 'incr', 'visits');
    process.stdout.write(
      `pod-counter in host b: ${podAfter} (was ${podBefore} in a: ${podAfter > podBefore ? 'continued, not reset' : 'RESET'})\n` +
        `pod-redis in host b: ${podKeys} keys, user:777 = ${podUser}, visits after one more incr = ${podVisits}\n`,
    );
    ok &&=
      podAfter > podBefore &&
      podKeys === 1001 &&
      podUser === 'name-777' &&
      podVisits === '42' &&
      leftOnA === '';
    process.stdout.write(ok ? 'demo: live migration OK\n' : 'demo: FAILED: state was not carried over\n');
  } catch (err) {
    process.stderr.write(`demo: ${(err as Error).message}\n`);
  } finally {
    if (!values.keep) {
      run(['stop', 'counter'], { quiet: true, allowFail: true });
      run(['stop', 'redis'], { quiet: true, allowFail: true });
      for (const host of ['a', 'b'])
        run(
          [
            'testbed',
            'exec',
            host,
            '--',
            'podman',
            'rm',
            '--force',
            '--time',
            '0',
            'pod-counter',
            'pod-redis',
          ],
          {
            quiet: true,
            allowFail: true,
          },
        );
      run(['testbed', 'down']);
    }
  }
  return ok ? 0 : 1;
}

process.exitCode = await main();
