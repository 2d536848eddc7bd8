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
  /**
   * Post-copy of a container: where the destination agent serves the pages to `criu lazy-pages` (its loopback, in
   * the destination host), asking the source for those that have not arrived.
   */
  pageServer?: { host: string; port: number };
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
}
