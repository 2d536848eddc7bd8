import type { Bitmap } from '../util/bitmap.ts';

/**
 * What a predictor sees after each round (a live pre-copy round, an emulator round or one sample of a trace):
 * the pages written during it, and where the source can tell, the pages read or written and system-level figures.
 */
export interface RoundObservation {
  /** 1-based, increasing by one per call. */
  round: number;
  /** Pages written during the round. */
  dirty: Bitmap;
  /** How long the round lasted, in seconds, where the source knows (rounds shrink as pre-copy converges). */
  seconds?: number;
  /** Pages read or written during the round, when the source provides accessed bits. */
  accessed?: Bitmap;
  /**
   * System-level features of the round (see SYSTEM_FEATURES in src/predict/features.ts for the order), from
   * /proc/vmstat and /proc/stat on a live host, emulated otherwise.
   */
  system?: Float32Array;
}

/**
 * Learns from rounds of per-page dirty bitmaps and predicts, per page, the probability that the page is written
 * again within the next `horizon` rounds. One instance per migration (or per trace replay); pure computation,
 * no I/O, no clock, no randomness beyond a seed given at construction.
 */
export interface Predictor {
  /** Name as on the command line, e.g. "markov" or "forest". */
  readonly name: string;
  readonly pageCount: number;
  observe(o: RoundObservation): void;
  /**
   * Writes into out (pageCount long) each page's probability in [0, 1] of being dirtied within the next `horizon`
   * rounds (default 1). Before any observation, a predictor writes its prior (usually 0: send everything).
   */
  predict(out: Float32Array, horizon?: number): void;
}
