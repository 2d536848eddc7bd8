/**
 * Large buffers kept for reuse. Fresh anonymous memory costs a page fault per 4 KiB on first touch, which on
 * virtual machines can take longer than a whole emulated migration; sweeps of many runs reuse the same memory.
 * Contents of a taken buffer are undefined.
 */
const free: Buffer[] = [];
const MAX_KEPT = 4;

export function takeBuffer(bytes: number): Buffer {
  let best = -1;
  for (let i = 0; i < free.length; i++) {
    if (free[i].length >= bytes && (best < 0 || free[i].length < free[best].length)) best = i;
  }
  if (best >= 0) return free.splice(best, 1)[0].subarray(0, bytes);
  return Buffer.allocUnsafeSlow(bytes);
}

export function releaseBuffer(buf: Buffer): void {
  const whole = Buffer.from(buf.buffer, 0, buf.buffer.byteLength);
  if (free.some((b) => b.buffer === whole.buffer)) return;
  free.push(whole);
  if (free.length > MAX_KEPT) free.sort((a, b) => b.length - a.length).pop();
}
