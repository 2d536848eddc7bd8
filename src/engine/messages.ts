/** JSON payloads of the control frames. The binary ones (PAGES, FAULT) are described where they are encoded. */

export interface HelloMessage {
  version: number;
  migrationId: string;
  strategy: string;
  /**
   * What the destination will make of the pages: 'criu-images' (a container: pages are kept in one file per
   * process, which becomes the parent image of the final dump at commit). Absent: plain memory.
   * 'postcopy-resume': the source takes up the post-copy of `migrationId` again after its session was lost (the
   * destination answers HELLO_ACK, its LAYOUT and a SWITCHOVER naming the pages it still lacks, then any
   * outstanding FAULT; the source pushes those pages and ends with POSTCOPY_DONE).
   */
  purpose?: 'criu-images' | 'postcopy-resume';
  /** A container (purpose 'criu-images'): how the destination agent restores it once the source hands over. */
  container?: ContainerHello;
}

/** What the destination agent needs to restore a container itself after COMMIT or SWITCHOVER. */
export interface ContainerHello {
  /** The runtime that restores it at the destination (a registered name: precog, ...). */
  runtime: string;
  /** The container's name (the destination refuses at once when it has one of that name). */
  name: string;
  /** The image the container needs (MovableRuntime.imageOf): the destination refuses at once without it. */
  image?: string;
  /** The named networks it is attached to (MovableRuntime.networksOf): the destination refuses without one. */
  networks?: string[];
  /** The source host's name (for messages and logs). */
  from: string;
  /** 'postcopy': resume before every page is there (needs a lazy restore); absent: stop-and-copy. */
  switchover?: 'stop-and-copy' | 'postcopy';
  /** 'lazy': run once the state is back, pages copied in by criu lazy-pages; 'full': every page first. */
  restore: 'lazy' | 'full';
  /** Longest the lazy copy-in may take at the destination (the source waits frozen that long at most), ms. */
  lazyTimeoutMs?: number;
  /** The source's link timeout, ms: during post-copy the destination takes silence that long as a lost source. */
  linkTimeoutMs?: number;
}

/**
 * Starts the ERROR a destination agent sends when a post-copy's restore failed after RESUMED: the container never
 * ran there, so the source may thaw (any other failure after RESUMED leaves both copies frozen).
 */
export const RESTORE_FAILED = 'the container restore failed at the destination (it never ran there)';

/** What the destination agent tells about its restore, with RESUMED (and DONE_ACK for post-copy). */
export interface RestoreReport {
  /** PID of the container's init in the destination host. */
  pid: number | null;
  /** The restore itself (criu restore and the container around it), ms. */
  restoreMs: number;
  /** The agent's commit: rebuilding the image directory from its page store, ms. */
  commitMs: number;
  mode: 'lazy' | 'full';
  /** Lazy restore: pages left to criu lazy-pages, and its time from the container running to the last page in. */
  lazyPages: number | null;
  lazyMs: number | null;
  /** Time from the container running to this message leaving (the source subtracts it to date the resume). */
  sinceRunningMs: number;
}

export interface RoundEndMessage {
  round: number;
  pages: number;
}

export interface CommitMessage {
  rounds: number;
}

export interface ResumedMessage {
  /** Destination clock time at which the workload runs again. */
  resumedAt: number;
  /** A container restored by the destination agent: how it went. */
  restore?: RestoreReport;
}

export interface SwitchoverMessage {
  /** Pages the destination must fetch (stale or never sent): a bitmap as little-endian u32 words, base64. */
  missing: string;
}

export interface DoneAck {
  lastArrival: number;
  faults: number;
  faultLatencies: number[];
  /** Post-copy of a container: pages the lazy-pages daemon asked for, and how many of those were not here yet. */
  requested?: number;
  /** A container's post-copy: the lazy-pages daemon's end (the agent answers once it has copied every page in). */
  restore?: RestoreReport;
}
