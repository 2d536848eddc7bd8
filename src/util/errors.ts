/** Errors users see. Each names what went wrong and what to do; the CLI maps them to exit codes. */

/** Bad flags or values: exit code 2, one line, no stack trace. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
  readonly exitCode = 2;
}

/** Malformed input files (traces, frames, images): also the user's to fix, exit code 2. */
export class InputError extends Error {
  override readonly name = 'InputError';
  readonly exitCode = 2;
}

/**
 * A migration broke its own correctness invariant (the destination's memory differs from the source's
 * memory at the moment it stopped). Never expected; always loud; exit code 3.
 */
export class InvariantError extends Error {
  override readonly name = 'InvariantError';
  readonly exitCode = 3;
}

/** A wire frame that cannot be accepted (bad magic, version, checksum, size, order). */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  readonly exitCode = 1;
}

/**
 * A value a peer sent, for a message that names it: JSON, at most 80 characters ("undefined" for undefined, where
 * JSON.stringify gives no string), so that a refusal neither throws nor echoes megabytes back.
 */
export function peerValue(x: unknown): string {
  return String(JSON.stringify(x)).slice(0, 80);
}

export function exitCodeOf(err: unknown): number {
  if (err && typeof err === 'object' && 'exitCode' in err && typeof err.exitCode === 'number') {
    return err.exitCode;
  }
  return 1;
}
