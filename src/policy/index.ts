import { UsageError } from '../util/errors.ts';
import { checkEmpty, paramSyntax, parseSpec, take, type Spec } from '../util/spec.ts';
import { parseCount, parseDuration } from '../util/units.ts';
import { cold, hybrid, postcopy, precopy, predictedHybrid, PRECOPY_DEFAULTS } from './classic.ts';
import { ITERPREDICT_DEFAULTS, iterpredict } from './iterpredict.ts';
import { SKIP_DEFAULTS, skipStrategy, U2C_DEFAULTS, u2cStrategy } from './predictive.ts';
import { checkPredictor, predictorFactory } from './predictors.ts';
import type { Strategy } from './types.ts';

export type {
  Strategy,
  Decision,
  DecisionInput,
  RoundSummary,
  Switchover,
  Lookahead,
  PageSelector,
  SelectorEnv,
  SelectorRound,
} from './types.ts';
export { isPostcopy } from './types.ts';

const positiveNumber = (v: string, what: string): number => {
  const n = Number(v);
  if (!(n > 0)) throw new UsageError(`${what} "${v}" must be a number > 0`);
  return n;
};

const fraction = (v: string, what: string): number => {
  const n = Number(v);
  if (!(v.trim() !== '' && n >= 0 && n <= 1)) throw new UsageError(`${what} "${v}" must be between 0 and 1`);
  return n;
};

const probability = (v: string, what: string): number => {
  const n = Number(v);
  if (!(n > 0 && n <= 1)) throw new UsageError(`${what} "${v}" must be a probability in (0, 1]`);
  return n;
};

const SKIP_PARAMS = ['threshold', 'trust', 'min-pages', 'max-rounds', 'max-factor', 'round-share'];

/**
 * The parameters a predictive strategy does not know go to its predictor ("mbdp:model=FILE" gives the forest its
 * model, "markov:prior=2" the Markov chain its prior); they are checked now, by building the predictor once.
 */
function predictorSpec(s: Spec, strategy: string, predictor: string, own: readonly string[]): string {
  const rest = [...s.params].map(([k, v]) => `:${k}=${v}`).join('');
  s.params.clear();
  const spec = predictor + rest;
  checkPredictor(spec, strategy, own);
  return spec;
}

/** A skip-until-clean strategy over the named predictor (markov, pr, mbdp, mbdpc, oracle). */
function skip(
  name: string,
  predictor: string,
  extra: {
    codec?: string;
    oracle?: boolean;
    timed?: boolean;
    roundShare?: number;
    maxRounds?: number;
  } = {},
) {
  return {
    params: SKIP_PARAMS,
    build: (s: Spec) => {
      const options = {
        threshold: take(s, 'threshold', probability, SKIP_DEFAULTS.threshold),
        // The oracle's holds need no proving: it knows.
        trust: take(s, 'trust', fraction, extra.oracle ? 0 : SKIP_DEFAULTS.trust),
        minPages: take(s, 'min-pages', (v, w) => parseCount(v, w, 0), SKIP_DEFAULTS.minPages),
        maxRounds: take(
          s,
          'max-rounds',
          (v, w) => parseCount(v, w, 1),
          extra.maxRounds ?? SKIP_DEFAULTS.maxRounds,
        ),
        maxFactor: take(s, 'max-factor', positiveNumber, SKIP_DEFAULTS.maxFactor),
        roundShare: take(s, 'round-share', fraction, extra.roundShare ?? SKIP_DEFAULTS.roundShare),
      };
      const spec = predictorSpec(s, name, predictor, SKIP_PARAMS);
      return skipStrategy(name, predictorFactory(spec), options, {
        ...(extra.codec ? { codec: extra.codec } : {}),
        refineWindow: Boolean(extra.oracle || extra.timed),
        predictor: spec,
      });
    },
  };
}

/** u2c's options from a spec (the hybrid's predicted rounds use them too, with a horizon k of one round). */
function u2cOptions(s: Spec, k: number) {
  return {
    k,
    threshold: take(s, 'threshold', probability, U2C_DEFAULTS.threshold),
    trust: take(s, 'trust', fraction, U2C_DEFAULTS.trust),
    minPages: take(s, 'min-pages', (v, w) => parseCount(v, w, 0), U2C_DEFAULTS.minPages),
    maxRounds: take(s, 'max-rounds', (v, w) => parseCount(v, w, 1), U2C_DEFAULTS.maxRounds),
    maxFactor: take(s, 'max-factor', positiveNumber, U2C_DEFAULTS.maxFactor),
  };
}

/** Strategy builders by name, with the parameters each accepts. One registration line per strategy. */
const STRATEGIES: Record<string, { params: string[]; build: (spec: Spec) => Strategy }> = {
  cold: { params: [], build: () => cold() },
  postcopy: { params: [], build: () => postcopy() },
  hybrid: {
    params: ['rounds', ...SKIP_PARAMS],
    build: (s) => {
      const rounds = take(
        s,
        'rounds',
        (v, w) => (v === 'auto' ? 'auto' : parseCount(v, w, 1)),
        'auto' as const,
      );
      if (rounds !== 'auto') return hybrid({ rounds });
      // auto: u2c's rounds with a horizon of one round, until the predicted pending set stops shrinking.
      const options = u2cOptions(s, 1);
      const spec = predictorSpec(s, 'hybrid', 'u2c', ['rounds', ...SKIP_PARAMS]);
      return predictedHybrid(u2cStrategy(predictorFactory(spec), options, spec));
    },
  },
  precopy: {
    params: ['rule', 'max-rounds', 'max-factor', 'min-pages', 'downtime'],
    build: (s) => {
      const rule = take(s, 'rule', (v) => v, 'xen');
      if (rule !== 'xen' && rule !== 'qemu') {
        throw new UsageError(`precopy rule "${rule}" is unknown; accepted: xen, qemu`);
      }
      return precopy({
        rule,
        maxRounds: take(s, 'max-rounds', (v, w) => parseCount(v, w, 1), PRECOPY_DEFAULTS.maxRounds),
        maxFactor: take(s, 'max-factor', positiveNumber, PRECOPY_DEFAULTS.maxFactor),
        minPages: take(s, 'min-pages', (v, w) => parseCount(v, w, 0), PRECOPY_DEFAULTS.minPages),
        downtimeLimit: take(s, 'downtime', parseDuration, PRECOPY_DEFAULTS.downtimeLimit),
      });
    },
  },
  iterpredict: {
    params: ['threshold', 'max-rounds', 'max-factor'],
    build: (s) =>
      iterpredict({
        threshold: take(s, 'threshold', (v, w) => parseCount(v, w, 1), ITERPREDICT_DEFAULTS.threshold),
        maxRounds: take(s, 'max-rounds', (v, w) => parseCount(v, w, 1), ITERPREDICT_DEFAULTS.maxRounds),
        maxFactor: take(s, 'max-factor', positiveNumber, ITERPREDICT_DEFAULTS.maxFactor),
      }),
  },
  markov: skip('markov', 'markov'),
  pr: skip('pr', 'pr'),
  mbdp: skip('mbdp', 'forest'),
  mbdpc: skip('mbdpc', 'forest', { codec: 'xor-lz4' }),
  // MBDP's rule with the predictor that learns from the migrating program's own rounds (src/predict/learn.ts).
  learn: skip('learn', 'learn'),
  u2c: {
    params: ['k', ...SKIP_PARAMS],
    build: (s) => {
      const options = u2cOptions(
        s,
        take(s, 'k', (v, w) => parseCount(v, w, 1), U2C_DEFAULTS.k),
      );
      const spec = predictorSpec(s, 'u2c', 'u2c', ['k', ...SKIP_PARAMS]);
      return u2cStrategy(predictorFactory(spec), options, spec);
    },
  },
  oracle: skip('oracle', 'oracle', { oracle: true }),
  // Rounds of at most an eighth of memory, so that the predictor sees the workload before most of it has gone:
  // the first pass alone takes eight rounds, hence twice the round cap (the data cap is the same).
  tempo: skip('tempo', 'tempo', { timed: true, roundShare: 0.125, maxRounds: 60 }),
};

export const STRATEGY_NAMES = Object.keys(STRATEGIES);

/** Each strategy with the parameters it takes, from the registry ("precopy[:rule=..:max-rounds=..]"). */
export function describeStrategies(): string[] {
  return STRATEGY_NAMES.map((n) => n + paramSyntax(STRATEGIES[n].params));
}

/** Builds a strategy from "name:key=value:...", e.g. "precopy:rule=qemu:downtime=300ms". */
export function parseStrategy(text: string): Strategy {
  const spec = parseSpec(text, 'strategy');
  const entry = STRATEGIES[spec.name];
  if (!entry) throw new UsageError(`unknown strategy "${spec.name}"; accepted: ${STRATEGY_NAMES.join(', ')}`);
  if (spec.words.length > 0) {
    throw new UsageError(`strategy ${spec.name} takes key=value parameters, not "${spec.words[0]}"`);
  }
  const strategy = entry.build(spec);
  checkEmpty(spec, 'strategy', entry.params);
  return strategy;
}
