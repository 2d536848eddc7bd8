import type { Decision, DecisionInput, Strategy } from './types.ts';

/** Cold migration: stop at once and copy everything while stopped. */
export function cold(): Strategy {
  return {
    name: 'cold',
    spec: 'cold',
    restore: 'full',
    decide: () => ({ stop: true, switchover: 'stop-and-copy', converged: null, reason: 'cold migration' }),
  };
}

/** Post-copy: stop at once, resume at the destination, fetch pages on demand while pushing the rest. */
export function postcopy(): Strategy {
  return {
    name: 'postcopy',
    spec: 'postcopy',
    switchover: 'postcopy',
    decide: () => ({ stop: true, switchover: 'postcopy', converged: null, reason: 'post-copy migration' }),
  };
}

export interface HybridOptions {
  rounds: number;
}

/** Hybrid: a fixed number of pre-copy rounds, then post-copy for what is left. */
export function hybrid(opts: HybridOptions = { rounds: 1 }): Strategy {
  return {
    name: 'hybrid',
    spec: `hybrid:rounds=${opts.rounds}`,
    switchover: 'postcopy',
    decide(input: DecisionInput): Decision {
      if (input.history.length < opts.rounds) return { stop: false };
      return {
        stop: true,
        switchover: 'postcopy',
        converged: null,
        reason: `${opts.rounds} pre-copy round(s) done`,
      };
    },
  };
}

/**
 * Hybrid with its pre-copy rounds chosen by a predictive strategy (`hybrid:rounds=auto`, the default): the base
 * strategy's rounds (held pages, predicted stop), and at its stop a post-copy switchover instead of stop-and-copy.
 */
export function predictedHybrid(base: Strategy): Strategy {
  return {
    ...base,
    name: 'hybrid',
    spec: `hybrid:rounds=auto${base.spec.replace(/^[a-z0-9]+/, '')}`,
    switchover: 'postcopy',
    codec: base.codec,
    decide(input: DecisionInput): Decision {
      const d = base.decide(input);
      if (!d.stop) return d;
      return { ...d, switchover: 'postcopy', reason: `${d.reason}; post-copy for the rest` };
    },
  };
}

export interface PrecopyOptions {
  /** 'xen': stop on rounds, data or pages left; 'qemu': stop when what is left fits the downtime limit. */
  rule: 'xen' | 'qemu';
  maxRounds: number;
  /** Cap on data sent, as a multiple of memory size. */
  maxFactor: number;
  /** Xen: stop when fewer pages than this are left. */
  minPages: number;
  /** QEMU: stop when the rest can be sent within this many seconds at the measured rate. */
  downtimeLimit: number;
}

export const PRECOPY_DEFAULTS: PrecopyOptions = {
  rule: 'xen',
  maxRounds: 30,
  maxFactor: 3,
  minPages: 50,
  downtimeLimit: 0.3,
};

/** Caps every iterative strategy shares: rounds and data. Returns the forced stop, or null. */
export function capStop(input: DecisionInput, maxRounds: number, maxFactor: number): Decision | null {
  const done = input.history.length;
  if (done >= maxRounds) {
    return {
      stop: true,
      switchover: 'stop-and-copy',
      converged: false,
      reason: `hit the cap of ${maxRounds} rounds`,
    };
  }
  const memory = input.totalPages * input.pageSize;
  if (input.bytesSent >= maxFactor * memory) {
    return {
      stop: true,
      switchover: 'stop-and-copy',
      converged: false,
      reason: `hit the data cap of ${maxFactor}x memory`,
    };
  }
  return null;
}

/** Vanilla pre-copy with Xen's stop rules, or QEMU's downtime rule. */
export function precopy(options: Partial<PrecopyOptions> = {}): Strategy {
  const o = { ...PRECOPY_DEFAULTS, ...options };
  const spec =
    o.rule === 'qemu'
      ? `precopy:rule=qemu:downtime=${o.downtimeLimit * 1000}ms:max-rounds=${o.maxRounds}:max-factor=${o.maxFactor}`
      : `precopy:rule=xen:max-rounds=${o.maxRounds}:max-factor=${o.maxFactor}:min-pages=${o.minPages}`;
  return {
    name: 'precopy',
    spec,
    decide(input: DecisionInput): Decision {
      if (input.history.length === 0) return { stop: false };
      if (o.rule === 'xen' && input.pendingPages < o.minPages) {
        return {
          stop: true,
          switchover: 'stop-and-copy',
          converged: true,
          reason: `${input.pendingPages} pages left (< ${o.minPages})`,
        };
      }
      if (o.rule === 'qemu' && input.linkRate > 0) {
        const expected = (input.pendingPages * input.pageSize) / input.linkRate;
        if (expected <= o.downtimeLimit) {
          return {
            stop: true,
            switchover: 'stop-and-copy',
            converged: true,
            reason: `rest fits the downtime limit (${(expected * 1000).toFixed(0)} ms <= ${o.downtimeLimit * 1000} ms)`,
          };
        }
      }
      return capStop(input, o.maxRounds, o.maxFactor) ?? { stop: false };
    },
  };
}
