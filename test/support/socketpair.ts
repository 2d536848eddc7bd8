// A connected pair of Unix stream sockets for protocol tests: what precog gets from spawning CRIU with a `pipe` on
// descriptor 3 (src/criu/pageserver.ts, PS_SOCKET_FD), without a child. The listening socket is in a directory
// of its own and gone before the pair is returned.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** [the far end (CRIU's, played by the test), precog's end (handed to attach())]. */
export async function socketPair(): Promise<[Socket, Socket]> {
  const dir = mkdtempSync(join(tmpdir(), 'precog-pair-'));
  const path = join(dir, 's');
  const server = createServer();
  const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(path, resolve));
  const far = connect(path);
  await new Promise<void>((resolve, reject) => far.once('connect', resolve).once('error', reject));
  const near = await accepted;
  // Stops listening now (its callback would wait for the pair to close).
  server.close();
  rmSync(dir, { recursive: true, force: true });
  return [far, near];
}
