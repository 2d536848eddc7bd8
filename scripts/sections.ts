// Sections of a generated document that another script owns, between HTML comment markers: docs/results.md is
// written by scripts/results.ts (emulator) except its live-migration section, written by scripts/bench-live.ts.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

export const LIVE_SECTION = 'bench:live';
/** The live runs of the predictive strategies, memchange and redis. */
export const LIVE_PREDICTIVE_SECTION = 'bench:live:predictive';
/** The live runs of post-copy and hybrid next to cold, pre-copy and the best predictive strategy. */
export const LIVE_POSTCOPY_SECTION = 'bench:live:postcopy';
/** A service on its own address (redis-lan) under a client on the service LAN, every strategy. */
export const LIVE_SERVICE_SECTION = 'bench:live:service';
/** Podman containers moved by precog next to Podman's own cold migration (bench:live --runtime podman). */
export const LIVE_PODMAN_SECTION = 'bench:live:podman';
export const LIVE_PODMAN_REDIS_SECTION = 'bench:live:podman-redis';
/** The stop's dump routes side by side (--strategies precopy/lazy,precopy/images). */
export const LIVE_DUMP_ROUTE_SECTION = 'bench:live:dump-route';
/** The emulator's switchover model fitted to live runs (scripts/fit-switchover.ts). */
export const SWITCHOVER_SECTION = 'switchover-model';
/** Live runs next to the emulator charged by that model (bench:live --from-json). */
export const LIVE_EMULATED_SECTION = 'bench:live:emulated';
/** Each step of the stop above the floor: a minimal container moved in the same run (bench:live). */
export const LIVE_FLOOR_SECTION = 'bench:live:floor';
/** Post-copy's push paced by the destination's acknowledgements, faults served first. */
export const LIVE_POSTCOPY_PACED_SECTION = 'bench:live:postcopy-paced';
/** The same cells measured on the code before the pacing (commit 7dbf8e6), the baseline of that section. */
export const LIVE_POSTCOPY_UNPACED_SECTION = 'bench:live:postcopy-unpaced';
/** Pre-copy, post-copy and hybrid at 256 MiB and 1 GiB on both links, with the floor. */
export const LIVE_STOP_GRID_SECTION = 'bench:live:stop-grid';
/**
 * The 1 Gbit/s cells of bench:live:emulated measured again after the stop's comparison a run at a time, the
 * commit's interval check and post-copy's push order (smallest regions first), with the floor and the emulator.
 */
export const LIVE_STOP_AFTER_SECTION = 'bench:live:stop-after';
/** Real programs' recorded patterns replayed live (workloads/replay.py), the predictive strategies against the codec control. */
export const LIVE_REPLAY_SECTION = 'bench:live:replay';
/** The predictors on recorded real programs, leave-one-program-out (scripts/predict-lopo.ts). */
export const PREDICT_LOPO_SECTION = 'predict-lopo';
/** Sections that scripts other than scripts/results.ts own, in the order they follow its part of docs/results.md. */
export const KEPT_SECTIONS: readonly string[] = [
  LIVE_SECTION,
  'experiments',
  'prediction-gap',
  LIVE_PREDICTIVE_SECTION,
  LIVE_POSTCOPY_SECTION,
  LIVE_SERVICE_SECTION,
  LIVE_PODMAN_SECTION,
  LIVE_PODMAN_REDIS_SECTION,
  LIVE_DUMP_ROUTE_SECTION,
  SWITCHOVER_SECTION,
  LIVE_EMULATED_SECTION,
  LIVE_FLOOR_SECTION,
  LIVE_POSTCOPY_PACED_SECTION,
  LIVE_POSTCOPY_UNPACED_SECTION,
  LIVE_STOP_GRID_SECTION,
  LIVE_STOP_AFTER_SECTION,
  PREDICT_LOPO_SECTION,
  LIVE_REPLAY_SECTION,
];

const markers = (name: string) => [`<!-- ${name} begin -->`, `<!-- ${name} end -->`] as const;

/** The section as it stands in FILE, markers included ('' when absent). */
export function keptSection(file: string, name: string): string {
  if (!existsSync(file)) return '';
  const text = readFileSync(file, 'utf8');
  const [begin, end] = markers(name);
  const i = text.indexOf(begin);
  const j = text.indexOf(end);
  return i >= 0 && j > i ? text.slice(i, j + end.length) + '\n' : '';
}

/** Replaces the section's body in FILE (appended at the end when the file has no such section). */
export function replaceSection(file: string, name: string, body: string): void {
  const [begin, end] = markers(name);
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const block = `${begin}\n${body.trim()}\n${end}`;
  const i = text.indexOf(begin);
  const j = text.indexOf(end);
  const next =
    i >= 0 && j > i
      ? text.slice(0, i) + block + text.slice(j + end.length)
      : `${text.trimEnd()}\n\n${block}\n`;
  writeFileSync(file, next);
}
