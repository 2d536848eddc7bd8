/**
 * The client side of the agents' control requests (src/agent/control.ts): what `precog migrate` and `precog job`
 * run, from any machine that holds a certificate of the agents' CA.
 */
import { decodeFrame, FrameType, jsonFrame, parseJson } from '../transport/frame.ts';
import type { Identity } from '../transport/pki.ts';
import { connectTls, type Endpoint } from '../transport/tls.ts';
import { ProtocolError } from '../util/errors.ts';
import type { ControlEvent, ControlRequest } from './control.ts';

/** The event that ends a request's stream. */
const FINAL = new Set(['report', 'resumed', 'jobs', 'cancelled', 'error']);

/**
 * Sends one request to the agent at `to` (its certificate must name `agentName`) and hands every event to
 * `onEvent`; resolves with the last one. `cancel` aborting sends the agent a second request, which cancels the
 * first (the agent then answers with an error event saying so).
 */
export async function controlRequest(
  to: Endpoint,
  identity: Identity,
  agentName: string,
  req: ControlRequest,
  onEvent: (e: ControlEvent) => void = () => {},
  cancel?: AbortSignal,
): Promise<ControlEvent> {
  // No idle limit: the agent may be silent for a while (a long dump, a restore); it ends the stream itself.
  const link = await connectTls(to, identity, agentName, { idleTimeoutMs: 0 });
  const onCancel = () => void link.send(jsonFrame(FrameType.Control, { action: 'cancel' })).catch(() => {});
  cancel?.addEventListener('abort', onCancel, { once: true });
  try {
    await link.send(jsonFrame(FrameType.Control, req));
    for (;;) {
      let raw: Buffer;
      try {
        raw = await link.next();
      } catch (err) {
        throw new ProtocolError(
          `the agent ${agentName} at ${to.host}:${to.port} ended the request without an answer: ${(err as Error).message}`,
        );
      }
      const frame = decodeFrame(raw);
      if (frame.type === FrameType.Error)
        throw new ProtocolError(`the agent ${agentName} refused: ${frame.payload.toString('utf8')}`);
      if (frame.type !== FrameType.Event) continue;
      const e = parseJson<ControlEvent>(frame);
      onEvent(e);
      if (FINAL.has(e.event)) return e;
    }
  } finally {
    cancel?.removeEventListener('abort', onCancel);
    link.close();
  }
}
