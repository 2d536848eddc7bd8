// bench:live's saved runs (its --json files), read back by the scripts that report on them.
import { readFileSync } from 'node:fs';

/** What identifies a grid cell of bench:live (a run saved before redis was added is memchange). */
export interface CellOf {
  workload?: string;
  link: string;
  sizeMiB: number;
  rate: number;
  strategy: string;
}

export const cellKey = (r: CellOf): string =>
  `${r.workload ?? 'memchange'} ${r.link} ${r.sizeMiB} ${r.rate} ${r.strategy}`;

/** The live runs of several --json files; a cell's runs come from the last file that has it (newer replace older). */
export function latestRuns<T extends CellOf>(files: readonly string[]): T[] {
  const byCell = new Map<string, T[]>();
  for (const file of files) {
    const fresh = new Map<string, T[]>();
    for (const r of (JSON.parse(readFileSync(file, 'utf8')) as { live: T[] }).live)
      fresh.set(cellKey(r), [...(fresh.get(cellKey(r)) ?? []), r]);
    for (const [k, runs] of fresh) byCell.set(k, runs);
  }
  return [...byCell.values()].flat();
}
