/** The metrics of one migration, with the same names in the emulator, real runs and reports (docs/metrics.md). */

export type Phase = 'live' | 'stop' | 'postcopy';

export interface RoundRecord {
  round: number;
  phase: Phase;
  /** Seconds since the migration started. */
  start: number;
  duration: number;
  pagesSent: number;
  /** Pending pages the strategy held back this round. */
  pagesSkipped: number;
  /** Pages sent that had been sent in an earlier round. */
  pagesResent: number;
  /** Pages sent as zero-page records (no payload). */
  zeroPages: number;
  /** Wire bytes of the round, framing and per-frame overhead included. */
  bytes: number;
  /** Pages found dirty when the round ended (live rounds only). */
  dirtyPages: number | null;
}

export interface PostcopyMetrics {
  /** Accesses at the destination to pages not there yet, each served remotely. */
  faults: number;
  faultLatencyMedian: number;
  faultLatencyP99: number;
  /** From resume at the destination until the last page arrived. */
  degradedTime: number;
  /** The paced push's window at its end (bytes) and the lowest round trip it saw (seconds); absent: not paced. */
  pushWindow?: { bytes: number; minRtt: number };
}

export interface RunMetrics {
  migrationId: string;
  strategy: string;
  /** Authentication, version check and layout transfer. */
  preparationTime: number;
  /** From the start until the destination runs with all of its memory. */
  totalTime: number;
  /** From freezing at the source until running at the destination. */
  downtime: number;
  /** From the destination having all state (commit or switchover received) until it runs. */
  resumeTime: number;
  bytesTotal: number;
  memoryBytes: number;
  pagesTotal: number;
  pagesSent: number;
  /** Live (pre-copy) rounds before the switchover. */
  liveRounds: number;
  converged: boolean | null;
  stopReason: string;
  postcopy: PostcopyMetrics | null;
  rounds: RoundRecord[];
}

export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

export const median = (values: readonly number[]): number => quantile(values, 0.5);

/** The medians over seeds of one point of the grid. */
export interface Summary {
  workload: string;
  memoryBytes: number;
  bandwidth: number;
  strategy: string;
  /** The codec chain the runs used. */
  codec: string;
  runs: number;
  /** Runs whose stop rule converged, of those where it applies (null: not an iterative strategy). */
  converged: { yes: number; of: number } | null;
  liveRounds: number;
  totalTime: number;
  downtime: number;
  preparationTime: number;
  resumeTime: number;
  bytesTotal: number;
  /** Wire bytes per live round (their mean within a run), and of the stop-and-copy. */
  bytesPerRound: number;
  bytesStop: number;
  /** Pages sent again after an earlier send, and page-rounds held back by a predictive strategy. */
  pagesResent: number;
  pagesHeld: number;
  faults: number | null;
  faultLatencyMedian: number | null;
  degradedTime: number | null;
  stopReasons: string[];
}
