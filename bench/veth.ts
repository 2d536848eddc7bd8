/**
 * The memory of a live 1 GiB process streamed from test host a to test host b over the unlimited veth link, with
 * precog send-memory (mutual TLS, the agents of the testbed), against plain Node TCP and bare mutual TLS between
 * the same hosts in the same run; median of several runs. The last run leaves the process stopped and checks b's
 * copy byte for byte against the stopped process at a. Needs root; brings the testbed up (rate none) if it is down.
 *
 *   sudo npm run bench:veth            # 3 runs, 1024 MiB
 *   sudo npm run bench:veth -- 5 256   # 5 runs, 256 MiB
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LiveProcessMemory } from '../src/memory/live.ts';
import { median } from '../src/report/metrics.ts';
import { AGENT, HOSTS_DIR, readState } from '../src/runtime/testbed.ts';
import { inHost, requireRootOrExit, withTestbed } from '../scripts/testbed-run.ts';

const runs = Number(process.argv[2] ?? 3);
const mib = Number(process.argv[3] ?? 1024);
const bytes = mib * 2 ** 20;
requireRootOrExit('bench:veth');
if (readState()?.rate)
  console.log(`note: the testbed is up with rate ${readState()?.rate}; numbers are for that link`);

await withTestbed(() => {
  // Sinks in b: plain TCP and mutual TLS, each answers "ok" once it has the bytes.
  const sink = (secure: boolean, port: number): string =>
    `const fs=require('fs'),p='${AGENT.pkiDir}/';const n=${bytes};` +
    `const h=s=>{let g=0;s.on('data',x=>{g+=x.length;if(g>=n)s.end('ok')})};` +
    (secure
      ? `require('tls').createServer({key:fs.readFileSync(p+'b-key.pem'),cert:fs.readFileSync(p+'b.pem'),ca:fs.readFileSync(p+'ca.pem'),requestCert:true,rejectUnauthorized:true,minVersion:'TLSv1.3'},h)`
      : `require('net').createServer(h)`) +
    `.listen(${port},'10.213.77.2')`;
  const sender = (secure: boolean, port: number): string =>
    `const fs=require('fs'),p='${AGENT.pkiDir}/';const buf=Buffer.alloc(${bytes},7);` +
    (secure
      ? `const c=require('tls').connect({host:'10.213.77.2',port:${port},key:fs.readFileSync(p+'a-key.pem'),cert:fs.readFileSync(p+'a.pem'),ca:fs.readFileSync(p+'ca.pem'),servername:'b'});c.once('secureConnect',go);`
      : `const c=require('net').connect(${port},'10.213.77.2');c.once('connect',go);`) +
    `async function go(){const t=performance.now();c.once('data',()=>{console.log((performance.now()-t)/1000);c.destroy()});` +
    `for(let o=0;o<buf.length;o+=1<<20){if(!c.write(buf.subarray(o,o+(1<<20))))await new Promise(r=>c.once('drain',r))}}`;
  inHost(
    'b',
    `(node -e "${sink(false, 7101)}" >/dev/null 2>&1 &) ; (node -e "${sink(true, 7102)}" >/dev/null 2>&1 &) ; sleep 1`,
  );

  const writer = inHost(
    'a',
    `mkfifo /tmp/bcmd && (tail -f /tmp/bcmd </dev/null 2>/dev/null | python3 /opt/precog/test/workloads/writer.py ${mib} > /tmp/bout 2>&1 &) && ` +
      'for i in $(seq 1200); do grep -q ready /tmp/bout && break; sleep 0.1; done; pgrep -f "python3 /opt/precog/test/workloads/writer.py"',
  );
  const inner = Number(writer.trim().split('\n').pop());
  console.log(`writer: pid ${inner} in host a with ${mib} MiB`);

  const tcp: number[] = [];
  const bare: number[] = [];
  const mine: number[] = [];
  let last: { migrationId: string } | null = null;
  for (let i = 0; i < runs; i++) {
    tcp.push(Number(inHost('a', `node -e "${sender(false, 7101)}"`)));
    bare.push(Number(inHost('a', `node -e "${sender(true, 7102)}"`)));
    const lastRun = i === runs - 1;
    const m = JSON.parse(
      inHost(
        'a',
        `/opt/precog/bin/precog send-memory --pid ${inner} --to 10.213.77.2:${AGENT.port} --peer b --pki ${AGENT.pkiDir} ` +
          `--name a --strategy cold --codec raw --id veth${i} --after ${lastRun ? 'stop' : 'thaw'} --json`,
      ),
    );
    // the pages phase (the agent's commit writes the image to disk afterwards)
    mine.push(m.rounds[0].duration * (bytes / m.memoryBytes));
    last = m;
    if (!lastRun) inHost('b', `rm -rf ${AGENT.stateDir}/veth${i}`);
    console.log(
      `run ${i + 1}: plain TCP ${tcp[i].toFixed(2)} s, bare mTLS ${bare[i].toFixed(2)} s, precog ${mine[i].toFixed(2)} s (per ${mib} MiB)`,
    );
  }

  // Byte for byte: b's image against the process, still stopped at a.
  const dir = join(HOSTS_DIR, 'b', 'data', 'agent', last!.migrationId);
  const image = readFileSync(join(dir, 'pages.img'));
  const layout = JSON.parse(readFileSync(join(dir, 'layout.json'), 'utf8'));
  const pid = readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .find((p) => {
      try {
        const s = readFileSync(`/proc/${p}/status`, 'utf8');
        return s.includes('Name:\tpython3') && new RegExp(`^NSpid:\\s+\\d+\\s+${inner}$`, 'm').test(s);
      } catch {
        return false;
      }
    });
  const snap = new LiveProcessMemory(Number(pid));
  const now = Buffer.alloc(layout.pageCount * layout.pageSize);
  snap.readPages(
    Uint32Array.from({ length: layout.pageCount }, (_, i) => i),
    now,
  );
  snap.close({ leaveStopped: false });
  // the same regions (b's carry the PIDs as seen inside host a), and the same bytes
  const strip = (l: { regions: { pid?: number }[] }): string =>
    JSON.stringify(l.regions.map(({ pid: _pid, ...r }) => r));
  const same = strip(snap.layout) === strip(layout) && now.equals(image);
  console.log(
    `verified: b's copy of ${layout.pageCount} pages ${same ? 'equals' : 'DIFFERS FROM'} the stopped process at a`,
  );

  const rate = (s: number): string =>
    `${((bytes / s) * 8e-9).toFixed(2)} Gbit/s (${(bytes / s / 1e9).toFixed(2)} GB/s)`;
  const [t, b, p] = [median(tcp), median(bare), median(mine)];
  console.log(`\n${mib} MiB from host a to host b over the unlimited veth, median of ${runs}:`);
  console.log(`  plain Node TCP:        ${rate(t)}`);
  console.log(`  bare Node mutual TLS:  ${rate(b)}  (${((t / b) * 100).toFixed(0)} % of plain TCP)`);
  console.log(
    `  precog send-memory:    ${rate(p)}  (${((t / p) * 100).toFixed(0)} % of plain TCP, ${((b / p) * 100).toFixed(0)} % of bare TLS)`,
  );
  if (!same) process.exitCode = 1;
});
