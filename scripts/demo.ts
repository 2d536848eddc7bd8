// The README's first command: builds the two test hosts, starts a counter service and redis in host a, writes
// state into both, live-migrates them to host b with precog's pre-copy and shows that the counter went on from
// where it was and that redis still has its keys. Exit 0 only if all of that is true. Needs root.
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
    process.stdout.write(ok ? 'demo: live migration OK\n' : 'demo: FAILED: state was not carried over\n');
  } catch (err) {
    process.stderr.write(`demo: ${(err as Error).message}\n`);
  } finally {
    if (!values.keep) {
      run(['stop', 'counter'], { quiet: true, allowFail: true });
      run(['stop', 'redis'], { quiet: true, allowFail: true });
      run(['testbed', 'down']);
    }
  }
  return ok ? 0 : 1;
}

process.exitCode = await main();
