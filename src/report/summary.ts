import { formatBandwidth, formatBytes, formatSeconds } from '../util/units.ts';
import type { Summary } from './metrics.ts';
import { renderTable, type Column } from './table.ts';

const mib = (b: number): string => (b / 2 ** 20).toFixed(0);

/** The comparison table of `precog simulate`: one row per workload x memory x link x strategy. */
export function summaryTable(rows: readonly Summary[], format: 'text' | 'markdown'): string {
  const cols: Column<Summary>[] = [
    { title: 'workload', value: (r) => r.workload },
    { title: 'memory', align: 'right', value: (r) => formatBytes(r.memoryBytes) },
    { title: 'link', align: 'right', value: (r) => formatBandwidth(r.bandwidth) },
    { title: 'strategy', value: (r) => r.strategy.split(':')[0] },
    { title: 'runs', align: 'right', value: (r) => String(r.runs) },
    { title: 'rounds', align: 'right', value: (r) => String(r.liveRounds) },
    { title: 'converged', value: (r) => (r.converged ? `${r.converged.yes}/${r.converged.of}` : '-') },
    { title: 'total', align: 'right', value: (r) => formatSeconds(r.totalTime) },
    { title: 'downtime', align: 'right', value: (r) => formatSeconds(r.downtime) },
    { title: 'prep', align: 'right', value: (r) => formatSeconds(r.preparationTime) },
    { title: 'resume', align: 'right', value: (r) => formatSeconds(r.resumeTime) },
    { title: 'data MiB', align: 'right', value: (r) => mib(r.bytesTotal) },
    { title: 'faults', align: 'right', value: (r) => (r.faults === null ? '-' : String(r.faults)) },
    {
      title: 'fault p50',
      align: 'right',
      value: (r) => (r.faultLatencyMedian === null ? '-' : formatSeconds(r.faultLatencyMedian)),
    },
    {
      title: 'degraded',
      align: 'right',
      value: (r) => (r.degradedTime === null ? '-' : formatSeconds(r.degradedTime)),
    },
    { title: 'stop reason', value: (r) => r.stopReasons.join('; ') },
  ];
  return renderTable(rows, cols, format);
}
