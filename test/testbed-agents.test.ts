// Agents in the test hosts: mutual TLS between hosts a and b, refusal of clients without a valid certificate, and a
// live process's memory streamed from a to b, verified byte for byte against the process stopped at a.
// Needs root (the testbed); skips with a message otherwise.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LiveProcessMemory } from '../src/memory/live.ts';
import { AGENT, HOSTS_DIR } from '../src/runtime/testbed.ts';
import { testbedSkip } from './support/testbed.ts';

const BIN = new URL('../bin/precog', import.meta.url).pathname;
const skip = testbedSkip('test hosts use namespaces, mounts and veth links');

function precog(...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}
const inHost = (host: string, script: string) => precog('testbed', 'exec', host, '--', 'sh', '-c', script);

/** The PID, as seen from this machine, of a process whose PID inside a host is `inner`. */
function outerPid(inner: number, comm: string): number {
  for (const p of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const status = readFileSync(`/proc/${p}/status`, 'utf8');
      const ns = /^NSpid:\s+(.*)$/m.exec(status)?.[1].split(/\s+/).map(Number) ?? [];
      if (ns.length > 1 && ns[ns.length - 1] === inner && status.includes(`Name:\t${comm}`)) return Number(p);
    } catch {
      // gone meanwhile
    }
  }
  throw new Error(`no process ${inner} (${comm}) inside a host`);
}

describe('agents in the test hosts', { skip }, () => {
  before(() => {
    const up = precog('testbed', 'up');
    assert.equal(up.code, 0, up.err);
  });
  after(() => {
    precog('testbed', 'down');
  });

  test('each host runs an agent that speaks only mutual TLS', () => {
    for (const h of ['a', 'b']) {
      const log = inHost(h, `cat ${AGENT.log}`).out;
      assert.match(log, /"tls":true.*"msg":"agent listening"/);
    }
    // No certificate: the handshake fails with "certificate required" at the client.
    const probe = `
      const tls = require('tls'), fs = require('fs');
      const opts = process.argv[1] === 'foreign' ? { key: fs.readFileSync('/tmp/x-key.pem'), cert: fs.readFileSync('/tmp/x.pem') } : {};
      const s = tls.connect({ host: '10.213.77.2', port: ${AGENT.port}, ca: fs.readFileSync('${AGENT.pkiDir}/ca.pem'), servername: 'b', ...opts });
      s.on('secureConnect', () => s.write(Buffer.from('PRCG')));
      s.on('data', () => { console.log('ANSWERED'); process.exit(0); });
      s.on('error', (e) => { console.log('REFUSED ' + e.message); process.exit(0); });
      s.on('close', () => { console.log('REFUSED closed'); process.exit(0); });`;
    const noCert = inHost('a', `node -e "${probe.replace(/"/g, '\\"')}" none`).out;
    assert.match(noCert, /^REFUSED .*(certificate required|closed)/);
    // A certificate from another CA (made in host a with a fresh precog PKI): refused too.
    const mk = inHost(
      'a',
      '/opt/precog/bin/precog pki init --dir /tmp/xpki >/dev/null && /opt/precog/bin/precog pki issue x --dir /tmp/xpki >/dev/null && cp /tmp/xpki/x.pem /tmp/xpki/x-key.pem /tmp/',
    );
    assert.equal(mk.code, 0, mk.err);
    const foreign = inHost('a', `node -e "${probe.replace(/"/g, '\\"')}" foreign`).out;
    assert.match(foreign, /^REFUSED /);
    assert.match(inHost('b', `cat ${AGENT.log}`).out, /refused a client without a valid certificate/);
  });

  /** Starts the python writer with `mib` MiB in host a (then `then`, a shell line using $CMD, the writer's fifo). */
  function startWriter(tag: string, mib: number, then = ''): number {
    const cmd = `/tmp/${tag}.cmd`;
    const out = `/tmp/${tag}.out`;
    const r = inHost(
      'a',
      `mkfifo ${cmd} && (tail -f ${cmd} </dev/null 2>/dev/null | python3 /opt/precog/test/workloads/writer.py ${mib} > ${out} 2>&1 &) && ` +
        `for i in $(seq 100); do grep -q ready ${out} && break; sleep 0.1; done; CMD=${cmd}; ${then}` +
        `pgrep -f "writer.py ${mib}$"`,
    );
    assert.equal(r.code, 0, r.err);
    return Number(r.out.trim().split('\n').pop());
  }

  /** send-memory from a to b; returns its metrics. */
  function sendMemory(
    inner: number,
    id: string,
  ): { liveRounds: number; pagesTotal: number; rounds: { pagesResent: number }[] } {
    const r = inHost(
      'a',
      `/opt/precog/bin/precog send-memory --pid ${inner} --to 10.213.77.2:${AGENT.port} --peer b --pki ${AGENT.pkiDir} --name a --id ${id} --json`,
    );
    assert.equal(r.code, 0, r.err);
    return JSON.parse(r.out);
  }

  /** b's committed image of migration `id` equals the memory of the (stopped) process at a, read now. */
  function assertCopy(id: string, inner: number): void {
    const dir = join(HOSTS_DIR, 'b', 'data', 'agent', id);
    const image = readFileSync(join(dir, 'pages.img'));
    const layout = JSON.parse(readFileSync(join(dir, 'layout.json'), 'utf8'));
    const pid = outerPid(inner, 'python3');
    assert.match(readFileSync(`/proc/${pid}/stat`, 'utf8'), /\) T /, 'the process was left stopped');
    const snap = new LiveProcessMemory(pid);
    try {
      // the same regions; b's carry the PIDs as seen inside host a
      const strip = (l: { regions: { pid?: number }[] }) => l.regions.map(({ pid: _pid, ...r }) => r);
      assert.deepEqual(strip(snap.layout), strip(layout));
      const now = Buffer.alloc(layout.pageCount * layout.pageSize);
      snap.readPages(
        Uint32Array.from({ length: layout.pageCount }, (_, i) => i),
        now,
      );
      assert.ok(now.equals(image), `b holds exactly the memory of the stopped process at a (${id})`);
    } finally {
      snap.close({ leaveStopped: true });
    }
  }

  test('memory of a live process goes from a to b byte for byte', () => {
    const inner = startWriter('w64', 64);
    const m = sendMemory(inner, 'live1');
    assert.ok(m.pagesTotal >= 16384, 'the 64 MiB buffer and more');
    assertCopy('live1', inner);
  });

  test('a process that keeps writing is copied exactly: hash tracking finds every page it wrote', () => {
    const inner = startWriter(
      'w32',
      32,
      'echo "spin 3" > $CMD; for i in $(seq 50); do grep -q spinning /tmp/w32.out && break; sleep 0.1; done; ',
    );
    const m = sendMemory(inner, 'spin1');
    assert.ok(m.liveRounds >= 2, 'more than one live round');
    assert.ok(
      m.rounds.slice(1).some((r) => r.pagesResent > 0),
      'pages written during the rounds were found and sent again',
    );
    assertCopy('spin1', inner);
  });
});
