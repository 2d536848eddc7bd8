import { UsageError } from '../util/errors.ts';
import { checkEmpty, parseSpec, take } from '../util/spec.ts';
import { parseCount, parseDuration } from '../util/units.ts';
import { cold, hybrid, postcopy, precopy, PRECOPY_DEFAULTS } from './classic.ts';
import { ITERPREDICT_DEFAULTS, iterpredict } from './iterpredict.ts';
import type { Strategy } from './types.ts';

export type { Strategy, Decision, DecisionInput, RoundSummary, Switchover } from './types.ts';

const positiveNumber = (v: string, what: string): number => {
  const n = Number(v);
  if (!(n > 0)) throw new UsageError(`${what} "${v}" must be a number > 0`);
  return n;
};

/** Strategy builders by name, with the parameters each accepts. One registration line per strategy. */
const STRATEGIES: Record<
  string,
  { params: string[]; build: (spec: ReturnType<typeof parseSpec>) => Strategy }
> = {
  cold: { params: [], build: () => cold() },
  postcopy: { params: [], build: () => postcopy() },
  hybrid: {
    params: ['rounds'],
    build: (s) => hybrid({ rounds: take(s, 'rounds', (v, w) => parseCount(v, w, 1), 1) }),
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
};

export const STRATEGY_NAMES = Object.keys(STRATEGIES);

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
