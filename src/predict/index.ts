import { UsageError } from '../util/errors.ts';
import { checkEmpty, paramSyntax, parseSpec, splitList, take, type Spec } from '../util/spec.ts';
import { parseCount } from '../util/units.ts';
import { DATASHIFT_DEFAULTS, DataShiftPredictor } from './datashift.ts';
import { DEFAULT_FOREST_MODEL, ForestPredictor, loadForestModel, type ForestModel } from './forest.ts';
import { LEARN_DEFAULTS, LearnPredictor } from './learn.ts';
import { MARKOV_DEFAULTS, MarkovPredictor } from './markov.ts';
import { OraclePredictor, type LookaheadFn } from './oracle.ts';
import { PR_DEFAULTS, PrPredictor } from './pr.ts';
import { RECENT_DEFAULTS, RecentPredictor } from './recent.ts';
import { TEMPO_DEFAULTS, TempoPredictor } from './tempo.ts';
import type { Predictor } from './types.ts';
import { ATTENTION_PARAMS, attentionPredictorFromSpec, U2C_PARAMS, u2cPredictorFromSpec } from './u2c.ts';

export type { Predictor, RoundObservation } from './types.ts';
export type { LookaheadFn } from './oracle.ts';

/** What a predictor may need besides its spec: a trained model, the future (oracle), a seed. */
export interface PredictorOptions {
  /** The forest's model, or the path of its file (default models/forest.json); a spec's model=PATH wins. */
  model?: ForestModel | string;
  /** The workload's future, for the oracle: only the emulator and trace replays know it. */
  lookahead?: LookaheadFn;
  /** How long the round about to start is expected to last (a page selector's), for predictors that count time. */
  window?: { seconds: number };
  seed?: number;
}

const nonNegative = (v: string, what: string): number => {
  const n = Number(v);
  if (!(v.trim() !== '' && n >= 0 && Number.isFinite(n)))
    throw new UsageError(`${what} "${v}" must be a number >= 0`);
  return n;
};
const positive = (v: string, what: string): number => {
  const n = Number(v);
  if (!(n > 0 && Number.isFinite(n))) throw new UsageError(`${what} "${v}" must be a number > 0`);
  return n;
};
const fraction = (v: string, what: string): number => {
  const n = Number(v);
  if (!(v.trim() !== '' && n >= 0 && n <= 1)) throw new UsageError(`${what} "${v}" must be between 0 and 1`);
  return n;
};

/** Predictor builders by name, with the parameters each accepts. One registration line per predictor. */
const PREDICTORS: Record<
  string,
  { params: string[]; build: (s: Spec, pageCount: number, o: PredictorOptions) => Predictor }
> = {
  markov: {
    params: ['prior'],
    build: (s, n) => new MarkovPredictor(n, { prior: take(s, 'prior', nonNegative, MARKOV_DEFAULTS.prior) }),
  },
  pr: {
    params: ['p', 'r', 'half-life'],
    build: (s, n) =>
      new PrPredictor(n, {
        probability: take(s, 'p', fraction, PR_DEFAULTS.probability),
        recency: take(s, 'r', fraction, PR_DEFAULTS.recency),
        halfLife: take(s, 'half-life', positive, PR_DEFAULTS.halfLife),
      }),
  },
  forest: {
    params: ['model'],
    build: (s, n, o) => {
      const path = take(s, 'model', (v) => v, '');
      const model = path
        ? loadForestModel(path)
        : typeof o.model === 'object'
          ? o.model
          : loadForestModel(o.model ?? DEFAULT_FOREST_MODEL);
      return new ForestPredictor(n, model);
    },
  },
  datashift: {
    params: ['window', 'p'],
    build: (s, n) => {
      const window = take(s, 'window', (v, w) => parseCount(v, w, 1), DATASHIFT_DEFAULTS.window);
      if (window > 32)
        throw new UsageError(`datashift parameter window "${window}" must be at most 32 rounds`);
      return new DataShiftPredictor(n, { window, share: take(s, 'p', fraction, DATASHIFT_DEFAULTS.share) });
    },
  },
  recent: {
    params: ['window'],
    build: (s, n) =>
      new RecentPredictor(
        n,
        take(s, 'window', (v, w) => parseCount(v, w, 1), RECENT_DEFAULTS.window),
      ),
  },
  tempo: {
    params: ['decay', 'min-run', 'margin'],
    build: (s, n, o) =>
      new TempoPredictor(
        n,
        {
          decay: take(s, 'decay', fraction, TEMPO_DEFAULTS.decay),
          minRun: take(s, 'min-run', (v, w) => parseCount(v, w, 1), TEMPO_DEFAULTS.minRun),
          margin: take(s, 'margin', nonNegative, TEMPO_DEFAULTS.margin),
        },
        o.window,
      ),
  },
  learn: {
    params: ['decay', 'sample', 'rate', 'cap'],
    build: (s, n, o) =>
      new LearnPredictor(n, {
        decay: take(s, 'decay', fraction, LEARN_DEFAULTS.decay),
        sample: take(s, 'sample', (v, w) => parseCount(v, w, 1), LEARN_DEFAULTS.sample),
        rate: take(s, 'rate', positive, LEARN_DEFAULTS.rate),
        cap: take(s, 'cap', positive, LEARN_DEFAULTS.cap),
        seed: o.seed ?? LEARN_DEFAULTS.seed,
      }),
  },
  attention: { params: ATTENTION_PARAMS, build: (s, n) => attentionPredictorFromSpec(s, n) },
  u2c: { params: U2C_PARAMS, build: (s, n) => u2cPredictorFromSpec(s, n) },
  oracle: {
    params: [],
    build: (_s, n, o) => {
      if (!o.lookahead) {
        throw new UsageError(
          'the oracle predictor needs the future: it works only in the emulator and on trace replays (predict-eval)',
        );
      }
      return new OraclePredictor(n, o.lookahead);
    },
  },
};

export const PREDICTOR_NAMES = Object.keys(PREDICTORS);

/** Each predictor with the parameters it takes, from the registry. */
export function describePredictors(): string[] {
  return PREDICTOR_NAMES.map((n) => n + paramSyntax(PREDICTORS[n].params));
}

/** Builds a predictor from "name:key=value:...", e.g. "markov:prior=2" or "datashift:window=3:p=0.6". */
export function createPredictor(text: string, pageCount: number, options: PredictorOptions = {}): Predictor {
  const spec = parseSpec(text, 'predictor');
  const entry = PREDICTORS[spec.name];
  if (!entry)
    throw new UsageError(`unknown predictor "${spec.name}"; accepted: ${PREDICTOR_NAMES.join(', ')}`);
  if (spec.words.length > 0) {
    throw new UsageError(`predictor ${spec.name} takes key=value parameters, not "${spec.words[0]}"`);
  }
  const predictor = entry.build(spec, pageCount, options);
  checkEmpty(spec, 'predictor', entry.params);
  return predictor;
}

/** Splits a comma-separated list of predictor specs; every one must name a known predictor. */
export function parsePredictorList(text: string): string[] {
  const list = splitList(text);
  if (list.length === 0) throw new UsageError(`no predictor given; accepted: ${PREDICTOR_NAMES.join(', ')}`);
  for (const item of list) {
    const name = parseSpec(item, 'predictor').name;
    if (!PREDICTORS[name])
      throw new UsageError(`unknown predictor "${name}"; accepted: ${PREDICTOR_NAMES.join(', ')}`);
  }
  return list;
}
