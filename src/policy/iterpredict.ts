import { capStop } from './classic.ts';
import type { Decision, DecisionInput, Strategy } from './types.ts';

export interface IterPredictOptions {
  /** T: stop when fewer pages than this are left (also the target of the prediction). */
  threshold: number;
  /** Stop at once when the predicted number of rounds exceeds this. */
  maxRounds: number;
  maxFactor: number;
}

export const ITERPREDICT_DEFAULTS: IterPredictOptions = { threshold: 50, maxRounds: 30, maxFactor: 3 };

/**
 * Kim & Kim's predicted number of pre-copy rounds: N = ceil(log_{R*C/S}(T/D1) + 1), with R the dirty rate in
 * pages/s, C the page size, S the link speed in bytes/s, T the threshold and D1 the pages of the first round.
 * Returns NaN when the logarithm is invalid: the dirty rate is at or above the link speed, or zero.
 */
export function predictedRounds(R: number, C: number, S: number, T: number, D1: number): number {
  const base = (R * C) / S;
  if (!(base > 0) || base >= 1 || !(S > 0) || !(D1 > 0)) return Number.NaN;
  if (T >= D1) return 1;
  return Math.ceil(Math.log(T / D1) / Math.log(base) + 1);
}

/** Average dirty rate over the finished rounds, in pages/s (the mean of each round's rate). */
export function averageDirtyRate(input: DecisionInput): number {
  const rates = input.history.filter((r) => r.duration > 0).map((r) => r.dirtyPages / r.duration);
  return rates.length === 0 ? 0 : rates.reduce((a, b) => a + b, 0) / rates.length;
}

/** Pre-copy that predicts how many rounds it needs, and stops at once when that number is out of reach. */
export function iterpredict(options: Partial<IterPredictOptions> = {}): Strategy {
  const o = { ...ITERPREDICT_DEFAULTS, ...options };
  return {
    name: 'iterpredict',
    spec: `iterpredict:threshold=${o.threshold}:max-rounds=${o.maxRounds}:max-factor=${o.maxFactor}`,
    decide(input: DecisionInput): Decision {
      const done = input.history.length;
      if (done === 0) return { stop: false };
      if (input.pendingPages < o.threshold) {
        return {
          stop: true,
          switchover: 'stop-and-copy',
          converged: true,
          reason: `${input.pendingPages} pages left (< ${o.threshold})`,
        };
      }
      const R = averageDirtyRate(input);
      const N = predictedRounds(R, input.pageSize, input.linkRate, o.threshold, input.history[0].pagesSent);
      if (Number.isNaN(N)) {
        return {
          stop: true,
          switchover: 'stop-and-copy',
          converged: false,
          reason: 'dirty rate at or above link speed (prediction invalid)',
        };
      }
      if (N > o.maxRounds) {
        return {
          stop: true,
          switchover: 'stop-and-copy',
          converged: false,
          reason: `predicted ${N} rounds > limit ${o.maxRounds}`,
        };
      }
      if (done >= N) {
        return {
          stop: true,
          switchover: 'stop-and-copy',
          converged: true,
          reason: `predicted ${N} rounds reached`,
        };
      }
      return capStop(input, o.maxRounds, o.maxFactor) ?? { stop: false, reason: `predicted ${N} rounds` };
    },
  };
}
