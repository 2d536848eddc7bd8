import { randomUUID } from 'node:crypto';
import { codecChain } from '../../codec/index.ts';
import { MigrationSource } from '../../engine/source.ts';
import { ProcessTreeMemory } from '../../memory/tree.ts';
import { isPostcopy, parseStrategy } from '../../policy/index.ts';
import { loadIdentity } from '../../transport/pki.ts';
import { connectTls, parseEndpoint } from '../../transport/tls.ts';
import { UsageError } from '../../util/errors.ts';
import { formatBytes, formatSeconds, parseCount, parseSize } from '../../util/units.ts';
import { emit, jsonTarget, type JsonFlag } from './json.ts';

export interface SendFlags {
  pid: string;
  to: string;
  peer: string;
  pki: string;
  name: string;
  strategy: string;
  codec: string;
  batch: string;
  after: 'stop' | 'thaw';
  id?: string;
  json?: JsonFlag;
}

/**
 * Streams the memory of a live process to an agent with the engine (live rounds with content-hash dirty tracking,
 * then a final copy with the process stopped). The agent keeps the pages; no CRIU is involved: this moves memory,
 * not the process (precog migrate does that).
 */
export async function sendMemory(f: SendFlags): Promise<void> {
  const pid = parseCount(f.pid, '--pid', 1);
  const target = jsonTarget(f.json);
  const strategy = parseStrategy(f.strategy);
  if (isPostcopy(strategy)) {
    throw new UsageError(
      `send-memory has no process at the destination to fault pages in: use a pre-copy strategy or cold`,
    );
  }
  const batchBytes = parseSize(f.batch, '--batch');
  const to = parseEndpoint(f.to, '--to');
  const identity = loadIdentity(f.pki, f.name);
  const mem = new ProcessTreeMemory(pid, { onUnmapped: 'zero' });
  const link = await connectTls(to, identity, f.peer);
  try {
    const m = await new MigrationSource(mem, link, strategy, {
      codec: codecChain(f.codec),
      batchBytes,
      stateBytes: 0,
      migrationId: f.id ?? randomUUID(),
    }).run();
    const rate = m.bytesTotal / m.totalTime;
    emit(
      target,
      m,
      () =>
        `migration ${m.migrationId}: ${m.pagesTotal} pages (${formatBytes(m.memoryBytes)}) of pid ${pid} at ${f.peer} in ${formatSeconds(m.totalTime)}, ` +
        `${m.liveRounds} live round(s), stopped ${formatSeconds(m.downtime)}, ${formatBytes(m.bytesTotal)} on the wire ` +
        `(${((rate * 8) / 1e9).toFixed(2)} Gbit/s); process ${f.after === 'thaw' ? 'continued' : 'left stopped'}\n`,
    );
  } finally {
    link.close();
    mem.close({ leaveStopped: f.after === 'stop' });
  }
}
