import { capStop } from './classic.ts';
import { PredictingSelector, type PredictorFactory } from './selector.ts';
import type { Decision, DecisionInput, Strategy } from './types.ts';

export interface SkipOptions {
  /** Hold a pending page when its predicted probability of being dirtied in the next round is >= this. */
  threshold: number;
  /** Honour holds only while the predictor's last checked precision is at least this (0: always). */
  trust: number;
  /** Stop when fewer pages than this are pending; hold nothing when fewer than this would be sent. */
  minPages: number;
  maxRounds: number;
  maxFactor: number;
  /** The most of memory one round sends (0: no limit; see SelectorOptions.roundShare). */
  roundShare: number;
}

export const SKIP_DEFAULTS: SkipOptions = {
  threshold: 0.5,
  trust: 0.5,
  minPages: 50,
  maxRounds: 30,
  maxFactor: 3,
  roundShare: 0,
};

export interface U2cOptions {
  /** Send a page only if predicted clean for the next k rounds; stop at the smallest predicted of the next k. */
  k: number;
  /** A page counts as "dirtied within k rounds" when its probability is >= this. */
  threshold: number;
  trust: number;
  minPages: number;
  maxRounds: number;
  maxFactor: number;
}

export const U2C_DEFAULTS: U2cOptions = {
  k: 3,
  threshold: 0.5,
  trust: 0.5,
  minPages: 50,
  maxRounds: 30,
  maxFactor: 3,
};

/** What every predictive stop rule checks first: round 1 always goes; too few pages pending. */
function convergedStop(input: DecisionInput, minPages: number): Decision | null {
  if (input.history.length === 0) return { stop: false };
  if (input.pendingPages < minPages) {
    return {
      stop: true,
      switchover: 'stop-and-copy',
      converged: true,
      reason: `${input.pendingPages} pages left (< ${minPages})`,
    };
  }
  return null;
}

const rounded = (f: readonly number[]): string => f.map((x) => Math.round(x)).join('/');

/** The predictor's own parameters as they follow the strategy's in a spec ("forest:model=F" -> ":model=F"). */
const predictorParams = (spec?: string): string => {
  const at = spec?.indexOf(':') ?? -1;
  return spec && at >= 0 ? spec.slice(at) : '';
};

const holding = (input: DecisionInput): string =>
  `holding ${input.heldPages ?? 0} of ${input.pendingPages} pending pages` +
  (input.forecast ? `; predicted pending ${rounded(input.forecast)}` : '');

/**
 * Skip-until-clean pre-copy (MBDP's transfer rule): pending pages predicted to be dirtied again are held, the
 * rest sent; held pages go once predicted clean, or at the stop. When holding would leave (almost) nothing to
 * send, the round sends everything (the selector releases its holds): in the emulator a round that sends nothing
 * takes no time, so stopping there would turn every wrong "dirty again" into downtime. Stops with Xen's rules, as
 * MBDP does: few pages pending, or the round and data caps.
 * `name` and `predictor` make markov, pr, mbdp, mbdpc and oracle of it.
 */
export function skipStrategy(
  name: string,
  predictor: PredictorFactory,
  options: Partial<SkipOptions> = {},
  extra: { codec?: string; refineWindow?: boolean; predictor?: string } = {},
): Strategy {
  const o = { ...SKIP_DEFAULTS, ...options };
  return {
    name,
    spec:
      `${name}:threshold=${o.threshold}:trust=${o.trust}:min-pages=${o.minPages}:max-rounds=${o.maxRounds}:max-factor=${o.maxFactor}` +
      (o.roundShare ? `:round-share=${o.roundShare}` : '') +
      predictorParams(extra.predictor),
    ...(extra.codec ? { codec: extra.codec } : {}),
    selector: (env) =>
      new PredictingSelector(env, predictor, {
        threshold: o.threshold,
        trust: o.trust,
        minPages: o.minPages,
        horizon: 1,
        forecastRounds: 0,
        refineWindow: extra.refineWindow ?? false,
        roundShare: o.roundShare,
      }),
    decide(input: DecisionInput): Decision {
      return (
        convergedStop(input, o.minPages) ??
        capStop(input, o.maxRounds, o.maxFactor) ?? { stop: false, reason: holding(input) }
      );
    },
  };
}

/**
 * U2CMigration's rule: send a page only if predicted clean for the next k rounds (all of them when that leaves
 * nothing to send); stop at the round whose predicted pending set is the smallest of now and the next k
 * (DecisionInput.forecast), else with the caps.
 */
export function u2cStrategy(
  predictor: PredictorFactory,
  options: Partial<U2cOptions> = {},
  predictorSpec?: string,
): Strategy {
  const o = { ...U2C_DEFAULTS, ...options };
  return {
    name: 'u2c',
    spec:
      `u2c:k=${o.k}:threshold=${o.threshold}:trust=${o.trust}:min-pages=${o.minPages}:max-rounds=${o.maxRounds}:max-factor=${o.maxFactor}` +
      predictorParams(predictorSpec),
    selector: (env) =>
      new PredictingSelector(env, predictor, {
        threshold: o.threshold,
        trust: o.trust,
        minPages: o.minPages,
        horizon: o.k,
        forecastRounds: o.k,
      }),
    decide(input: DecisionInput): Decision {
      const first = convergedStop(input, o.minPages);
      if (first) return first;
      const f = input.forecast;
      if (f && f.length > 0) {
        const best = Math.min(...f);
        if (input.pendingPages <= best) {
          return {
            stop: true,
            switchover: 'stop-and-copy',
            converged: true,
            reason: `predicted minimum now: ${input.pendingPages} pending, next ${f.length} rounds ${rounded(f)}`,
          };
        }
      }
      return capStop(input, o.maxRounds, o.maxFactor) ?? { stop: false, reason: holding(input) };
    },
  };
}
