import { median, type Phase, type RoundRecord, type RunMetrics } from '../report/metrics.ts';
import { simulate, type Scenario, type SimResult } from './run.ts';

/** A grid of scenarios: every combination of the listed values, each repeated over seeds. */
export interface Experiment {
  base: Scenario;
  workloads: string[];
  strategies: string[];
  memories: number[];
  bandwidths: number[];
  seeds: number[];
}

import type { Summary } from '../report/metrics.ts';
export type { Summary };

export function scenarios(e: Experiment): Scenario[] {
  const out: Scenario[] = [];
  for (const workload of e.workloads)
    for (const memoryBytes of e.memories)
      for (const bandwidth of e.bandwidths)
        for (const strategy of e.strategies)
          for (const seed of e.seeds)
            out.push({ ...e.base, workload, memoryBytes, bandwidth, strategy, seed });
  return out;
}

export async function runExperiment(
  e: Experiment,
  onRun?: (r: SimResult, done: number, total: number) => void,
): Promise<{ runs: SimResult[]; summary: Summary[] }> {
  const all = scenarios(e);
  const runs: SimResult[] = [];
  for (const s of all) {
    const r = await simulate(s);
    runs.push(r);
    onRun?.(r, runs.length, all.length);
  }
  return { runs, summary: summarize(runs) };
}

export function summarize(runs: readonly SimResult[]): Summary[] {
  const groups = new Map<string, SimResult[]>();
  for (const r of runs) {
    const s = r.scenario;
    const key = JSON.stringify([s.workload, s.memoryBytes, s.bandwidth, s.strategy, r.codec]);
    const g = groups.get(key);
    if (g) g.push(r);
    else groups.set(key, [r]);
  }
  return [...groups.values()].map((g) => {
    const s = g[0].scenario;
    const m = g.map((r) => r.metrics);
    const pc = m.filter((x) => x.postcopy !== null).map((x) => x.postcopy!);
    const iterative = m.filter((x) => x.converged !== null);
    const lat = pc.map((p) => p.faultLatencyMedian).filter((x) => Number.isFinite(x));
    return {
      workload: s.workload,
      memoryBytes: g[0].metrics.memoryBytes,
      bandwidth: s.bandwidth,
      strategy: g[0].metrics.strategy,
      codec: g[0].codec,
      runs: g.length,
      converged: iterative.length
        ? { yes: iterative.filter((x) => x.converged).length, of: iterative.length }
        : null,
      liveRounds: median(m.map((x) => x.liveRounds)),
      totalTime: median(m.map((x) => x.totalTime)),
      downtime: median(m.map((x) => x.downtime)),
      preparationTime: median(m.map((x) => x.preparationTime)),
      resumeTime: median(m.map((x) => x.resumeTime)),
      bytesTotal: median(m.map((x) => x.bytesTotal)),
      bytesPerRound: median(m.map(perLiveRound)),
      bytesStop: median(m.map((x) => sumOf(x, 'stop', (r) => r.bytes))),
      pagesResent: median(m.map((x) => x.rounds.reduce((a, r) => a + r.pagesResent, 0))),
      pagesHeld: median(m.map((x) => sumOf(x, 'live', (r) => r.pagesSkipped))),
      faults: pc.length ? median(pc.map((p) => p.faults)) : null,
      faultLatencyMedian: lat.length ? median(lat) : null,
      degradedTime: pc.length ? median(pc.map((p) => p.degradedTime)) : null,
      stopReasons: [...new Set(m.map((x) => x.stopReason))],
    };
  });
}

function sumOf(m: RunMetrics, phase: Phase, f: (r: RoundRecord) => number): number {
  return m.rounds.reduce((a, r) => a + (r.phase === phase ? f(r) : 0), 0);
}

/** Mean wire bytes of a run's live rounds (0 without live rounds). */
function perLiveRound(m: RunMetrics): number {
  return m.liveRounds === 0 ? 0 : sumOf(m, 'live', (r) => r.bytes) / m.liveRounds;
}
