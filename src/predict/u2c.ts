import { UsageError } from '../util/errors.ts';
import { take, type Spec } from '../util/spec.ts';
import { parseCount, parseDuration } from '../util/units.ts';
import {
  ATTENTION_DEFAULTS,
  AttentionPredictor,
  DEFAULT_ATTENTION_MODEL,
  loadAttentionModel,
  type AttentionModel,
  type AttentionOptions,
} from './attention.ts';
import {
  DATASHIFT_DEFAULTS,
  DataShiftPredictor,
  type DataShiftOptions,
  type StabilityAware,
} from './datashift.ts';
import type { Predictor, RoundObservation } from './types.ts';

/** Rounds a page must be predicted clean for before the u2c strategy sends it (U2CMigration's k). */
export const U2C_HORIZON = 3;

export interface U2COptions {
  datashift: Partial<DataShiftOptions>;
  attention: Partial<AttentionOptions>;
  /**
   * How scores are laid out. "held": a stable page scores its held state, 0 or 1, as U2CMigration; an unstable one
   * phase 2's probability p. "ranked" (default): the same order, with the ties among stable pages broken by phase 2:
   * stable clean pages score RANK_EDGE x p, unstable ones RANK_EDGE + (1 - 2 RANK_EDGE) x p, stable dirty ones
   * 1 - RANK_EDGE + RANK_EDGE x p. Every decision at threshold 0.5 is the same as with "held"; rankings (AUC) and
   * forecasts also use phase 2 among the stable pages.
   */
  stable: 'held' | 'ranked';
}

export const U2C_DEFAULTS: Pick<U2COptions, 'stable'> = { stable: 'ranked' };

/** Width of the score bands of stable pages with stable=ranked. */
export const RANK_EDGE = 0.01;

/**
 * U2CMigration's two-phase predictor. Phase 1 (datashift) marks the pages whose last state held in more than P of
 * the short window as stable and predicts that state to hold, for any horizon: 1 for a stable dirty page, 0 for a
 * stable clean one. Phase 2 (attention) predicts the other pages from their dirty and access history and the system
 * features, for the horizon asked (the u2c strategy asks for k = U2C_HORIZON: the page is sent only when it is
 * predicted clean for the next k rounds). See U2COptions.stable for how stable pages score.
 */
export class U2CPredictor implements Predictor, StabilityAware {
  readonly name = 'u2c';
  readonly pageCount: number;
  readonly phase1: DataShiftPredictor;
  readonly phase2: AttentionPredictor;
  readonly stableScores: U2COptions['stable'];
  private readonly mask: Uint8Array;
  private readonly held: Float32Array;
  private stableCount = 0;

  constructor(pageCount: number, model: AttentionModel, options: Partial<U2COptions> = {}) {
    this.pageCount = pageCount;
    this.stableScores = options.stable ?? U2C_DEFAULTS.stable;
    this.held = new Float32Array(this.stableScores === 'ranked' ? pageCount : 0);
    this.phase1 = new DataShiftPredictor(pageCount, options.datashift);
    this.phase2 = new AttentionPredictor(pageCount, model, options.attention);
    this.mask = new Uint8Array(pageCount);
  }

  observe(o: RoundObservation): void {
    this.phase1.observe(o);
    this.phase2.observe(o);
  }

  /** Pages phase 1 was sure about in the last predict(). */
  get lastStable(): number {
    return this.stableCount;
  }

  stable(out: Uint8Array): number {
    return this.phase1.stable(out);
  }

  predict(out: Float32Array, horizon = 1): void {
    const mask = this.mask;
    this.stableCount = this.phase1.stable(mask);
    if (this.stableScores === 'held') {
      if (this.stableCount > 0) this.phase1.predict(out, horizon);
      this.phase2.predict(out, horizon, this.stableCount > 0 ? mask : undefined);
      return;
    }
    const held = this.held;
    if (this.stableCount > 0) this.phase1.predict(held, horizon);
    this.phase2.predict(out, horizon);
    const e = RANK_EDGE;
    const mid = 1 - 2 * e;
    for (let p = 0; p < this.pageCount; p++) {
      const x = out[p];
      out[p] = !mask[p] ? e + mid * x : held[p] >= 0.5 ? 1 - e + e * x : e * x;
    }
  }
}

/** Parameters of the attention and u2c predictor specs ("u2c:window=3:p=0.6:stable=held:model=PATH"). */
export const ATTENTION_PARAMS = ['model', 'round'];
export const U2C_PARAMS = [...ATTENTION_PARAMS, 'window', 'p', 'stable'];

function attentionFromSpec(s: Spec): { model: AttentionModel; options: Partial<AttentionOptions> } {
  const model = loadAttentionModel(take(s, 'model', (v) => v, DEFAULT_ATTENTION_MODEL));
  const roundSeconds = take(
    s,
    'round',
    (v, what) => {
      const t = parseDuration(v, what);
      if (!(t > 0)) throw new UsageError(`${what} "${v}" must be a duration > 0 (the length of a round)`);
      return t;
    },
    ATTENTION_DEFAULTS.roundSeconds,
  );
  return { model, options: { roundSeconds } };
}

/** The attention predictor of a spec: model=PATH (default models/attention.json), round=DURATION. */
export function attentionPredictorFromSpec(s: Spec, pageCount: number): AttentionPredictor {
  const { model, options } = attentionFromSpec(s);
  return new AttentionPredictor(pageCount, model, options);
}

/** The u2c predictor of a spec: the attention's parameters, datashift's window and p, and stable=held|ranked. */
export function u2cPredictorFromSpec(s: Spec, pageCount: number): U2CPredictor {
  const { model, options } = attentionFromSpec(s);
  const window = take(s, 'window', (v, w) => parseCount(v, w, 1), DATASHIFT_DEFAULTS.window);
  if (window > 32) throw new UsageError(`u2c parameter window "${window}" must be at most 32 rounds`);
  const share = take(
    s,
    'p',
    (v, what) => {
      const n = Number(v);
      if (!(v.trim() !== '' && n >= 0 && n <= 1))
        throw new UsageError(`${what} "${v}" must be between 0 and 1`);
      return n;
    },
    DATASHIFT_DEFAULTS.share,
  );
  const stable = take(
    s,
    'stable',
    (v, what) => {
      if (v !== 'held' && v !== 'ranked') throw new UsageError(`${what} "${v}" must be held or ranked`);
      return v;
    },
    U2C_DEFAULTS.stable,
  );
  return new U2CPredictor(pageCount, model, { datashift: { window, share }, attention: options, stable });
}
