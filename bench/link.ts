/**
 * Throughput of precog's wire path: the engine streaming 1 GiB of pages (idle emulated memory, raw codec, 1 MiB
 * frames) to an agent (`precog agent`, its own process, as on a real host) over mutual TLS on loopback, against
 * plain Node TCP carrying the same bytes to a sink process in the same run. Median of several runs each.
 *
 *   npm run bench:link            # 3 runs, 1 GiB
 *   npm run bench:link -- 5 512   # 5 runs, 512 MiB
 */
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { codecChain } from '../src/codec/index.ts';
import { WallClock } from '../src/util/clock.ts';
import { MigrationSource } from '../src/engine/source.ts';
import { ContentPool } from '../src/memory/content.ts';
import { EmulatedMemory } from '../src/memory/emulated.ts';
import { parseWorkload } from '../src/memory/workloads.ts';
import { parseStrategy } from '../src/policy/index.ts';
import { median } from '../src/report/metrics.ts';
import { initPki, issueCert, loadIdentity } from '../src/transport/pki.ts';
import { connectTls } from '../src/transport/tls.ts';

const BIN = new URL('../bin/precog', import.meta.url).pathname;

const runs = Number(process.argv[2] ?? 3);
const mib = Number(process.argv[3] ?? 1024);
const bytes = mib * 2 ** 20;
const frame = 2 ** 20;

const dir = mkdtempSync(join(tmpdir(), 'precog-bench-'));
await initPki(join(dir, 'pki'));
await issueCert(join(dir, 'pki'), 'src');
await issueCert(join(dir, 'pki'), 'dst');
const PORT = 17000 + (process.pid % 1000);
const agent = spawn(
  process.execPath,
  [
    BIN,
    'agent',
    '--listen',
    `127.0.0.1:${PORT}`,
    '--state-dir',
    join(dir, 'state'),
    '--pki',
    join(dir, 'pki'),
    '--name',
    'dst',
    '--spill-size',
    '8GiB',
  ],
  { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, PRECOG_LOG_LEVEL: 'info' } },
);
await new Promise<void>((resolve, reject) => {
  agent.stderr!.on('data', (d: Buffer) => d.includes('agent listening') && resolve());
  agent.once('exit', (code) => reject(new Error(`agent exited with ${code}`)));
});
const at = { host: '127.0.0.1', port: PORT };
const plan = parseWorkload('idle', bytes);
const pool = new ContentPool(1, 4096);
const mem = new EmulatedMemory(plan.layout, pool, plan.create(pool, 1), new WallClock(), 0, 1);

async function precogTls(i: number): Promise<number> {
  const link = await connectTls(at, loadIdentity(join(dir, 'pki'), 'src'), 'dst');
  const m = await new MigrationSource(mem, link, parseStrategy('cold'), {
    codec: codecChain('raw'),
    batchBytes: frame,
    stateBytes: 0,
    migrationId: `bench-${i}`,
  }).run();
  // The pages' phase: from the first page written until the last one taken by the link (the agent's commit,
  // which writes the image to disk, is not part of the link's throughput).
  const s = m.rounds[0].duration;
  link.close();
  rmSync(join(dir, 'state', `bench-${i}`), { recursive: true, force: true });
  return s;
}

/** Plain TCP: the same bytes in 1 MiB writes with backpressure to a sink process that replies when it has all. */
const SINK = `const n=${bytes};require('net').createServer(s=>{let g=0;s.on('data',d=>{g+=d.length;if(g>=n)s.end('ok')})}).listen(0,'127.0.0.1',function(){console.log(this.address().port)})`;
const sink = spawn(process.execPath, ['-e', SINK], { stdio: ['ignore', 'pipe', 'inherit'] });
const sinkPort = await new Promise<number>((r) =>
  sink.stdout!.once('data', (d: Buffer) => r(Number(d.toString()))),
);
const TLS_SINK = `const fs=require('fs'),d=${JSON.stringify(join(dir, 'pki'))},r=f=>fs.readFileSync(d+'/'+f),n=${bytes};require('tls').createServer({key:r('dst-key.pem'),cert:r('dst.pem'),ca:r('ca.pem'),requestCert:true,rejectUnauthorized:true,minVersion:'TLSv1.3'},s=>{let g=0;s.on('data',x=>{g+=x.length;if(g>=n)s.end('ok')})}).listen(0,'127.0.0.1',function(){console.log(this.address().port)})`;
const tlsSink = spawn(process.execPath, ['-e', TLS_SINK], { stdio: ['ignore', 'pipe', 'inherit'] });
const tlsSinkPort = await new Promise<number>((r) =>
  tlsSink.stdout!.once('data', (d: Buffer) => r(Number(d.toString()))),
);

/** The same bytes in 1 MiB writes with backpressure, plain TCP or bare mutual TLS (no precog framing or store). */
async function stream(secure: boolean): Promise<number> {
  const id = loadIdentity(join(dir, 'pki'), 'src');
  const c = secure
    ? tls.connect({
        host: '127.0.0.1',
        port: tlsSinkPort,
        key: id.key,
        cert: id.cert,
        ca: id.ca,
        servername: 'dst',
      })
    : net.connect(sinkPort, '127.0.0.1');
  await new Promise((r) => c.once(secure ? 'secureConnect' : 'connect', r));
  const finished = new Promise((r) => c.once('data', r));
  const t = performance.now();
  for (let off = 0; off < bytes; off += frame) {
    if (!c.write(mem.bytes.subarray(off, off + frame))) await new Promise((r) => c.once('drain', r));
  }
  await finished;
  const s = (performance.now() - t) / 1000;
  c.destroy();
  return s;
}

const tlsTimes: number[] = [];
const tcpTimes: number[] = [];
const bareTimes: number[] = [];
for (let i = 0; i < runs; i++) {
  tcpTimes.push(await stream(false));
  bareTimes.push(await stream(true));
  tlsTimes.push(await precogTls(i));
  console.log(
    `run ${i + 1}: plain TCP ${tcpTimes[i].toFixed(2)} s, bare mutual TLS ${bareTimes[i].toFixed(2)} s, precog over mutual TLS ${tlsTimes[i].toFixed(2)} s`,
  );
}
agent.kill('SIGTERM');
sink.kill('SIGTERM');
tlsSink.kill('SIGTERM');
rmSync(dir, { recursive: true, force: true });
const rate = (s: number): string =>
  `${((bytes / s) * 8e-9).toFixed(2)} Gbit/s (${(bytes / s / 1e9).toFixed(2)} GB/s)`;
const precog = median(tlsTimes);
const tcp = median(tcpTimes);
const bare = median(bareTimes);
console.log('');
console.log(`${mib} MiB on loopback, median of ${runs}:`);
console.log(`  plain Node TCP:          ${rate(tcp)}`);
console.log(`  bare Node mutual TLS:    ${rate(bare)}  (${((tcp / bare) * 100).toFixed(0)} % of plain TCP)`);
console.log(
  `  precog engine over mTLS: ${rate(precog)}  (${((tcp / precog) * 100).toFixed(0)} % of plain TCP, ${((bare / precog) * 100).toFixed(0)} % of bare TLS)`,
);
console.log(`  goal 1 GB/s: ${bytes / precog >= 1e9 ? 'met' : 'not met'}`);
