/** What a strategy sees: the history of finished rounds and where the migration stands. Plain data only. */
export interface RoundSummary {
  /** 1-based round number. */
  round: number;
  /** Seconds the round took on the link. */
  duration: number;
  pagesSent: number;
  /** Wire bytes of the round. */
  bytes: number;
  /** Pages found dirty at the end of the round (written while it ran). */
  dirtyPages: number;
}

export interface DecisionInput {
  /** The live round about to start (1-based); round 1 would send every page. */
  round: number;
  history: readonly RoundSummary[];
  pageSize: number;
  totalPages: number;
  /** Pages that still have to be sent: never sent, or dirtied since they were sent. */
  pendingPages: number;
  /** Wire bytes sent so far, all rounds. */
  bytesSent: number;
  /** Measured link throughput in bytes/s over the finished rounds (0 before round 1 ends). */
  linkRate: number;
}

/** How the migration continues once live rounds stop. */
export type Switchover = 'stop-and-copy' | 'postcopy';

export type Decision =
  | { stop: false; reason?: string }
  | {
      stop: true;
      switchover: Switchover;
      /** True when the stop rule was met as intended, false when a cap forced it, null for non-iterative modes. */
      converged: boolean | null;
      reason: string;
    };

/** A pure decision function over the round history. One per strategy; no I/O, no clock, no randomness. */
export interface Strategy {
  readonly name: string;
  /** The strategy with its parameters, as it would be written on the command line. */
  readonly spec: string;
  decide(input: DecisionInput): Decision;
}
