import type { Summary } from './metrics.ts';
import { formatBytes, formatSeconds } from '../util/units.ts';
import { renderTable } from './table.ts';

const pct = (a: number, b: number): string => {
  const d = Number((((a - b) / b) * 100).toFixed(1));
  return d === 0 ? '0.0 %' : `${d > 0 ? '+' : ''}${d.toFixed(1)} %`;
};

/**
 * One strategy against a baseline, point by point: relative total time, downtime and data (negative is better).
 */
export function compareTable(rows: readonly Summary[], strategy: string, baseline: string): string {
  const name = (r: Summary): string => r.strategy.split(':')[0];
  const pairs = rows
    .filter((r) => name(r) === strategy)
    .map((r) => ({
      r,
      b: rows.find(
        (x) =>
          name(x) === baseline &&
          x.workload === r.workload &&
          x.memoryBytes === r.memoryBytes &&
          x.bandwidth === r.bandwidth,
      ),
    }))
    .filter((p): p is { r: Summary; b: Summary } => p.b !== undefined);
  return renderTable(
    pairs,
    [
      { title: 'workload', value: (p) => p.r.workload },
      { title: 'memory', align: 'right', value: (p) => formatBytes(p.r.memoryBytes) },
      { title: `${baseline} total`, align: 'right', value: (p) => formatSeconds(p.b.totalTime) },
      { title: `${strategy} total`, align: 'right', value: (p) => formatSeconds(p.r.totalTime) },
      { title: 'total time', align: 'right', value: (p) => pct(p.r.totalTime, p.b.totalTime) },
      { title: `${baseline} downtime`, align: 'right', value: (p) => formatSeconds(p.b.downtime) },
      { title: `${strategy} downtime`, align: 'right', value: (p) => formatSeconds(p.r.downtime) },
      { title: 'downtime', align: 'right', value: (p) => pct(p.r.downtime, p.b.downtime) },
      { title: 'data', align: 'right', value: (p) => pct(p.r.bytesTotal, p.b.bytesTotal) },
    ],
    'markdown',
  );
}
