import type { Bitmap } from '../util/bitmap.ts';
import type { RoundObservation } from '../predict/types.ts';

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
  /** Pending pages the strategy's page selector held back in the round (0 or absent without a selector). */
  pagesHeld?: number;
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
  /** With a page selector: the pending pages it would hold back in the round about to start. */
  heldPages?: number;
  /**
   * With a page selector that forecasts: the predicted number of pending pages at the start of each of the next
   * rounds if the migration goes on (index 0: after the round about to start).
   */
  forecast?: readonly number[];
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

/**
 * A pure decision function over the round history. One per strategy; no I/O, no clock, no randomness. A
 * predictive strategy also makes a page selector per migration (the stateful half: its predictor), which the
 * engine feeds after every live round and asks, before every round, which pending pages to hold back.
 */
export interface Strategy {
  readonly name: string;
  /** The strategy with its parameters, as it would be written on the command line. */
  readonly spec: string;
  decide(input: DecisionInput): Decision;
  /** Makes the page selector of one migration; absent: every pending page is sent every round. */
  selector?(env: SelectorEnv): PageSelector;
  /** The codec chain the strategy is meant with (e.g. xor-lz4 for mbdpc) when the user names none. */
  readonly codec?: string;
  /**
   * How the strategy hands over (absent: stop-and-copy): 'postcopy' resumes at the destination before every page
   * is there (post-copy, hybrid), which needs a lazy restore and cannot fall back to the source once resumed.
   */
  readonly switchover?: Switchover;
  /** The restore it is meant with when the user names none (cold: 'full', the classic dump/copy/restore). */
  readonly restore?: 'lazy' | 'full';
}

/** Whether a strategy ends in a post-copy switchover. */
export const isPostcopy = (s: Pick<Strategy, 'switchover'>): boolean => s.switchover === 'postcopy';

/** The workload's future, as the emulator knows it (live runs do not). */
export interface Lookahead {
  /** Pages the workload will write from now until `seconds` from now. */
  written(seconds: number): Bitmap;
  /** The link's nominal payload rate in bytes/s, to turn pages into seconds before a round has measured it. */
  rate: number;
}

/** What a selector is made with: the memory's size, and in the emulator a view of the future (oracle). */
export interface SelectorEnv {
  pageCount: number;
  pageSize: number;
  lookahead?: Lookahead;
}

/** Where the migration stands when the selector is asked about the round about to start. */
export interface SelectorRound {
  /** The live round about to start (1-based). */
  round: number;
  pageSize: number;
  /** Measured link throughput in bytes/s (0 before round 1 ends). */
  linkRate: number;
  /** Seconds the last live round took (0 before round 1 ends). */
  lastDuration: number;
}

/**
 * The per-page half of a predictive strategy. After every live round the engine tells it which pages were written
 * during the round (and, where the source can tell, which were accessed and system-level figures); before every
 * live round it asks which pending pages to hold back. Held pages stay pending and are offered again next round;
 * whatever is pending at the stop goes in the stop-and-copy.
 */
export interface PageSelector {
  observe(o: RoundObservation): void;
  /** The pending pages to hold back in this round (the engine keeps only those that are pending). */
  hold(pending: Bitmap, r: SelectorRound): Bitmap;
  /**
   * Predicted pending pages at the start of each of the next rounds if the migration goes on holding `held`;
   * read by decide() as DecisionInput.forecast.
   */
  forecast?(pending: Bitmap, held: Bitmap, r: SelectorRound): number[] | undefined;
}
