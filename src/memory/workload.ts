/**
 * A workload is a deterministic sequence of page accesses on its own clock. The emulated memory (at the source)
 * and the resumed process (at the destination, during post-copy) pull events from it as virtual time passes.
 */
export interface Workload {
  readonly name: string;
  /** Time (s, workload clock) of the pending access; Infinity when the workload does nothing more. */
  readonly time: number;
  /** Page index of the pending access. */
  readonly page: number;
  /** Whether the pending access writes (reads only matter for post-copy faults). */
  readonly write: boolean;
  /** Performs the pending access on mem (writing bytes when it is a write) and moves to the next one. */
  apply(mem: Buffer): void;
}

/** Never touches memory. */
export class IdleWorkload implements Workload {
  readonly name = 'idle';
  readonly time = Infinity;
  readonly page = 0;
  readonly write = false;
  apply(): void {
    throw new Error('idle workload has no accesses');
  }
}
