// Test-only entry point for test/criu-pageserver.test.ts, run inside a test host:
//   cd /opt/precog && node --import tsx test/pageserver-receiver.ts --port P --out DIR [--have DIR] [--max-bytes N]
// Listens on 127.0.0.1:P as CRIU's page server for one `criu dump --page-server` session, prints "listening P",
// then writes what it received into DIR with precog's image writer (pagemap-<pid>.img + pages-<n>.img, one entry
// per run as CRIU sent it) and prints one JSON line: counts, layout, commands and, per task, the changed pages.
// --have DIR: the destination is taken to hold every page of the dump in DIR (pagemap + pages read with precog's
// reader); a page counts as unchanged when its bytes are the same there. --max-bytes N: refuse a stream with more
// than N bytes of pages (the receiver then resets the connection and exits 1 with the error on stderr).
import { mkdirSync, readdirSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { PAGE_SIZE, readPages } from '../src/criu/pages.ts';
import { PageServer, writeReceivedImages, type HavePredicate } from '../src/criu/pageserver.ts';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    out: { type: 'string' },
    have: { type: 'string' },
    'max-bytes': { type: 'string' },
  },
});
if (!values.port || !values.out) {
  console.error('usage: pageserver-receiver.ts --port P --out DIR [--have DIR] [--max-bytes N]');
  process.exit(2);
}

let have: HavePredicate | undefined;
if (values.have) {
  const held = new Map<number, Map<bigint, Buffer>>();
  for (const f of readdirSync(values.have)) {
    const m = /^pagemap-(\d+)\.img$/.exec(f);
    if (!m) continue;
    const pages = new Map<bigint, Buffer>();
    for (const run of readPages(values.have, Number(m[1])))
      if (run.data)
        for (let i = 0; i < run.nrPages; i++)
          pages.set(run.vaddr + BigInt(i * PAGE_SIZE), run.data.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
    held.set(Number(m[1]), pages);
  }
  have = (pid, vaddr, bytes, kind) => kind === 'pid' && (held.get(pid)?.get(vaddr)?.equals(bytes) ?? false);
}

const maxBytes = values['max-bytes'] ? Number(values['max-bytes']) : undefined;
const server = await PageServer.listen({ port: Number(values.port), have, maxBytes });
console.log(`listening ${server.port}`);
const started = performance.now();
try {
  const dump = await server.done;
  const ms = performance.now() - started;
  mkdirSync(values.out, { recursive: true });
  const written = writeReceivedImages(values.out, dump);
  console.log(
    JSON.stringify({
      ms: Math.round(ms),
      layout: dump.layout,
      bytes: dump.bytes,
      commands: dump.commands,
      counts: dump.counts,
      written: { files: written.files, pages: written.pages, pagesBytes: written.pagesBytes },
      tasks: [...dump.tasks.values()].map((t) => ({
        pid: t.id,
        runs: t.runs.length,
        flags: [...new Set(t.runs.map((r) => r.flags))],
        counts: t.counts,
        changed: t.changed.map((p) => p.vaddr.toString(16)),
      })),
      shmem: [...dump.shmem.values()].map((s) => ({ id: s.id, runs: s.runs.length, counts: s.counts })),
    }),
  );
} catch (err) {
  console.error(String((err as Error).message ?? err));
  process.exit(1);
}
