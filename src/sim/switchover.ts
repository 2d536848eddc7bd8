import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { median } from '../report/metrics.ts';
import { InputError } from '../util/errors.ts';

/**
 * What a live switchover costs beyond the pages on the link, as the emulator charges it: a model fitted from
 * bench:live's step records (scripts/fit-switchover.ts) and read from a file (docs/data/switchover-model.json).
 *
 * Every term is a linear cost, in milliseconds, of what the emulator knows at the stop:
 * - the dump (freeze to dumped): by route, fixed + per GiB of memory + per MiB of pages sent at the stop, plus a
 *   cold start when the stop comes before any live round (the lazy route's hashing threads are not warm yet). The
 *   lazy route reads and hashes all memory and reads again only what changed; the images route writes and reads
 *   back every page.
 * - the pages sent at the stop, beyond their time on the link (reading, encoding and sending them is slower than a
 *   fast link): per MiB.
 * - the commit and restore (from the state's arrival until precog reports the container running; the state's time
 *   on the link is the emulator's own): by restore mode (lazy, in full, or post-copy's), fixed + per GiB. The commit rebuilds the image directory
 *   from the page store, so it grows with the memory.
 * - the answer: how much later the service answers from outside than precog reports it running (the probe's
 *   downtime minus precog's), by restore mode, fixed + per GiB + per second the memory takes on the link: after a
 *   post-copy switchover the process first faults in the pages it needs to answer, each behind the pages already
 *   pushed. It may be below 0 (precog's downtime starts when it asks CRIU to
 *   dump, a little before the tasks stop), so it is the one term fitted without the bound at 0.
 */
export interface SwitchoverModel {
  /** Where it was fitted from, for the reader (files, date). */
  fittedFrom: string;
  /** By route; the emulator takes lazy and postcopy (images: only where runs dumped that way were fitted). */
  dump: Partial<Record<DumpRoute, DumpCost>>;
  send: { perMiBMs: number };
  restore: Record<RestoreMode, Linear>;
  answer: Record<RestoreMode, Linear & { perLinkSecondMs: number }>;
  /** The state the live runs carried (median bytes): the emulator's state size when it uses the model. */
  stateBytes: number;
}

/** fixed + per GiB of the container's memory, in ms. */
export interface Linear {
  fixedMs: number;
  perGiBMs: number;
}

/** The model fitted to the runs in docs/results.md ("switchover-model"), shipped with precog. */
export const DEFAULT_SWITCHOVER_MODEL = fileURLToPath(
  new URL('../../docs/data/switchover-model.json', import.meta.url),
);

/** fixed + per GiB + per MiB sent at the stop + a cold start, in ms. */
export type DumpCost = Linear & { perChangedMiBMs: number; coldStartMs: number };

/**
 * The dump's route as the model tells them apart: lazy (CRIU's non-memory state; precog hashes all memory and reads
 * what changed), postcopy (the lazy route of a post-copy with no round before: nothing read at the stop) and images
 * (a full local dump read back).
 */
export type DumpRoute = 'lazy' | 'postcopy' | 'images';
/** How the destination restores: lazily from its own images, in full, or lazily with the pages still coming (post-copy). */
export type RestoreMode = 'lazy' | 'full' | 'postcopy';
export const DUMP_ROUTES: readonly DumpRoute[] = ['lazy', 'postcopy', 'images'];
/** The routes the emulator charges (precog's runtime, auto): a model must have them. */
const EMULATED_ROUTES: readonly DumpRoute[] = ['lazy', 'postcopy'];
export const RESTORE_MODES: readonly RestoreMode[] = ['lazy', 'full', 'postcopy'];

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

/** Seconds from the freeze until the dump is done; `cold`: the stop came before any live round. */
export function dumpSeconds(
  m: SwitchoverModel,
  route: DumpRoute,
  memoryBytes: number,
  changedBytes: number,
  cold: boolean,
): number {
  const d = m.dump[route];
  if (!d)
    throw new InputError(
      `the switchover model has no dump via ${route}: fit it to runs that dumped that way (npm run fit:switchover)`,
    );
  return (
    (d.fixedMs +
      (d.perGiBMs * memoryBytes) / GiB +
      (d.perChangedMiBMs * changedBytes) / MiB +
      (cold ? d.coldStartMs : 0)) /
    1000
  );
}

/** Seconds the pages sent while the source is stopped take beyond their time on the link. */
export function sendSeconds(m: SwitchoverModel, bytes: number): number {
  return (m.send.perMiBMs * bytes) / MiB / 1000;
}

/** Seconds the destination takes, once the state is in, until the service answers from outside. */
export function resumeSeconds(
  m: SwitchoverModel,
  mode: RestoreMode,
  memoryBytes: number,
  /** The link's rate, bit/s. */
  bandwidth: number,
): number {
  const r = m.restore[mode];
  const a = m.answer[mode];
  const linkSeconds = (memoryBytes * 8) / bandwidth;
  return (
    (r.fixedMs +
      a.fixedMs +
      ((r.perGiBMs + a.perGiBMs) * memoryBytes) / GiB +
      a.perLinkSecondMs * linkSeconds) /
    1000
  );
}

/** The dump route precog's own runtime takes by default (dumpRoute in src/migrate/live.ts, auto). */
export function defaultRoute(postcopy: boolean, liveRounds: number): DumpRoute {
  return postcopy && liveRounds === 0 ? 'postcopy' : 'lazy';
}

/** The restore a strategy gets at the destination (lazy unless it says full; post-copy's own). */
export function restoreModeOf(postcopy: boolean, restore: 'lazy' | 'full' | undefined): RestoreMode {
  return postcopy ? 'postcopy' : (restore ?? 'lazy');
}

/** Reads and checks a model file; a file that is not one is an InputError naming what is wrong. */
export function loadSwitchoverModel(file: string): SwitchoverModel {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new InputError(
      `switchover model ${file}: ${(err as Error).message}; fit one with npm run fit:switchover`,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new InputError(`switchover model ${file}: not JSON (${(err as Error).message})`);
  }
  return checkSwitchoverModel(raw, file);
}

export function checkSwitchoverModel(raw: unknown, where: string): SwitchoverModel {
  const obj = (v: unknown, path: string): Record<string, unknown> => {
    if (typeof v !== 'object' || v === null || Array.isArray(v))
      throw new InputError(`switchover model ${where}: ${path} must be an object`);
    return v as Record<string, unknown>;
  };
  // A cost is a finite number of milliseconds, not negative (the answer's may be), below an hour.
  const cost = (o: Record<string, unknown>, key: string, path: string, min = 0): number => {
    const v = o[key];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > 3_600_000)
      throw new InputError(
        `switchover model ${where}: ${path}.${key} must be a number of milliseconds from ${min} to 3600000, not ${JSON.stringify(v)}`,
      );
    return v;
  };
  const top = obj(raw, 'the file');
  const linear = (v: unknown, path: string, min = 0): Linear => {
    const o = obj(v, path);
    return { fixedMs: cost(o, 'fixedMs', path, min), perGiBMs: cost(o, 'perGiBMs', path, min) };
  };
  const stateBytes = top.stateBytes;
  if (
    typeof stateBytes !== 'number' ||
    !Number.isInteger(stateBytes) ||
    stateBytes < 0 ||
    stateBytes > 1 << 30
  )
    throw new InputError(`switchover model ${where}: stateBytes must be an integer from 0 to 1 GiB`);
  const dump = obj(top.dump, 'dump');
  const restore = obj(top.restore, 'restore');
  const answer = obj(top.answer, 'answer');
  const m: SwitchoverModel = {
    fittedFrom: typeof top.fittedFrom === 'string' ? top.fittedFrom : '',
    dump: {} as SwitchoverModel['dump'],
    send: { perMiBMs: cost(obj(top.send, 'send'), 'perMiBMs', 'send') },
    restore: {} as SwitchoverModel['restore'],
    answer: {} as SwitchoverModel['answer'],
    stateBytes,
  };
  for (const r of DUMP_ROUTES) {
    const path = `dump.${r}`;
    if (dump[r] === undefined && !EMULATED_ROUTES.includes(r)) continue;
    const d = obj(dump[r], path);
    m.dump[r] = {
      ...linear(d, path),
      perChangedMiBMs: cost(d, 'perChangedMiBMs', path),
      coldStartMs: cost(d, 'coldStartMs', path),
    };
  }
  for (const r of RESTORE_MODES) m.restore[r] = linear(restore[r], `restore.${r}`);
  for (const k of RESTORE_MODES) {
    const path = `answer.${k}`;
    m.answer[k] = {
      ...linear(answer[k], path, -3_600_000),
      perLinkSecondMs: cost(obj(answer[k], path), 'perLinkSecondMs', path, -3_600_000),
    };
  }
  return m;
}

/**
 * Least squares of y on the columns of xs plus an intercept, every coefficient at least 0: the best fit over the
 * subsets of columns whose unconstrained fit has no negative coefficient (a handful of columns: exact, not
 * iterative). Each record's error counts times its weight (default 1; 1/y: relative errors, so that a 64 MiB
 * container's half second weighs as much as a 1 GiB one's seconds). Returns [intercept, ...one per column] (0 for
 * a column left out).
 */
export function fitNonNegative(
  xs: readonly (readonly number[])[],
  y: readonly number[],
  weight: readonly number[] = y.map(() => 1),
): number[] {
  const k = xs[0]?.length ?? 0;
  if (y.length === 0) throw new InputError('nothing to fit: no records');
  let best: { sse: number; coef: number[] } | undefined;
  for (let mask = 0; mask < 1 << (k + 1); mask++) {
    const cols = [...Array(k + 1).keys()].filter((c) => mask & (1 << c));
    const row = (i: number) => cols.map((c) => (c === 0 ? 1 : xs[i][c - 1]) * weight[i]);
    const sol = cols.length
      ? leastSquares(
          y.map((_, i) => row(i)),
          y.map((v, i) => v * weight[i]),
        )
      : [];
    if (!sol || sol.some((v) => v < 0)) continue;
    const coef = new Array<number>(k + 1).fill(0);
    cols.forEach((c, j) => (coef[c] = sol[j]));
    let sse = 0;
    for (let i = 0; i < y.length; i++) {
      const pred = coef[0] + xs[i].reduce((a, x, j) => a + x * coef[j + 1], 0);
      sse += ((y[i] - pred) * weight[i]) ** 2;
    }
    if (!best || sse < best.sse - 1e-9) best = { sse, coef };
  }
  return best!.coef;
}

/** Solves the normal equations; undefined when they are singular (columns that the data cannot tell apart). */
function leastSquares(a: number[][], y: readonly number[]): number[] | undefined {
  const n = a[0].length;
  const m: number[][] = [...Array(n)].map((_, r) => [
    ...[...Array(n)].map((_, c) => a.reduce((s, row) => s + row[r] * row[c], 0)),
    a.reduce((s, row, i) => s + row[r] * y[i], 0),
  ]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r][c]) > Math.abs(m[p][c])) p = r;
    const scale = Math.max(1, ...m.map((row) => Math.abs(row[c])));
    if (Math.abs(m[p][c]) < 1e-9 * scale) return undefined;
    [m[c], m[p]] = [m[p], m[c]];
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = m[r][c] / m[c][c];
      for (let j = c; j <= n; j++) m[r][j] -= f * m[c][j];
    }
  }
  return m.map((row, r) => row[n] / row[r]);
}

/** One live migration's switchover, as bench:live's step records give it (scripts/fit-switchover.ts). */
export interface SwitchoverSample {
  /** The grid cell it belongs to (link, size, strategy): the fit takes each cell's medians. */
  cell: string;
  route: DumpRoute;
  mode: RestoreMode;
  /** The stop came before any live round (cold, post-copy). */
  cold: boolean;
  memoryBytes: number;
  /** Pages sent at the stop, in bytes. */
  changedBytes: number;
  /** The link's rate, bit/s. */
  bandwidth: number;
  stateBytes: number;
  dumpMs: number;
  /** The pages sent at the stop, less their time on the link. */
  sendMs: number;
  /** The state's arrival to the container running: the commit and the restore (the state's link time taken off). */
  restoreMs: number;
  /** The probe's downtime minus precog's. */
  answerMs: number;
}

/** Weights for relative errors: 1/y (a y near 0 counts as 1 ms). */
const relative = (y: number[]): number[] => y.map((v) => 1 / Math.max(1, Math.abs(v)));

/** Each cell's medians, one sample per cell. */
export function cellMedians(samples: readonly SwitchoverSample[]): SwitchoverSample[] {
  const by = new Map<string, SwitchoverSample[]>();
  for (const s of samples) by.set(s.cell, [...(by.get(s.cell) ?? []), s]);
  return [...by.values()].map((runs) => {
    const m = (f: (s: SwitchoverSample) => number) => median(runs.map(f));
    return {
      ...runs[0],
      memoryBytes: m((s) => s.memoryBytes),
      changedBytes: m((s) => s.changedBytes),
      stateBytes: m((s) => s.stateBytes),
      dumpMs: m((s) => s.dumpMs),
      sendMs: m((s) => s.sendMs),
      restoreMs: m((s) => s.restoreMs),
      answerMs: m((s) => s.answerMs),
    };
  });
}

/** Fits the model to live runs (each cell's medians); an InputError when a route or restore mode has no run. */
export function fitSwitchover(samples: readonly SwitchoverSample[], fittedFrom: string): SwitchoverModel {
  const cells = cellMedians(samples);
  const need = (route: (c: SwitchoverSample) => boolean, what: string, fix: string) => {
    const xs = cells.filter(route);
    if (!xs.length) throw new InputError(`cannot fit the switchover model: no run ${what}; ${fix}`);
    return xs;
  };
  const gib = (b: number) => b / GiB;
  const mib = (b: number) => b / MiB;
  const linear = (xs: SwitchoverSample[], y: (c: SwitchoverSample) => number): Linear => {
    const [fixedMs, perGiBMs] = fitNonNegative(
      xs.map((c) => [gib(c.memoryBytes)]),
      xs.map(y),
      relative(xs.map(y)),
    );
    return { fixedMs, perGiBMs };
  };
  const m: SwitchoverModel = {
    fittedFrom,
    dump: {} as SwitchoverModel['dump'],
    send: { perMiBMs: 0 },
    restore: {} as SwitchoverModel['restore'],
    answer: {} as SwitchoverModel['answer'],
    stateBytes: Math.round(median(cells.map((c) => c.stateBytes))),
  };
  for (const r of DUMP_ROUTES) {
    if (!EMULATED_ROUTES.includes(r) && !cells.some((c) => c.route === r)) continue;
    const xs = need(
      (c) => c.route === r,
      r === 'postcopy' ? 'of postcopy dumped lazily' : `dumped via ${r}`,
      r === 'postcopy' ? 'include postcopy' : 'include precopy and cold',
    );
    // The cold start only where the runs tell it apart from the fixed cost (both cold and warm stops).
    const both = xs.some((c) => c.cold) && xs.some((c) => !c.cold);
    const [fixedMs, perGiBMs, perChangedMiBMs, coldStartMs] = fitNonNegative(
      xs.map((c) => [gib(c.memoryBytes), mib(c.changedBytes), both && c.cold ? 1 : 0]),
      xs.map((c) => c.dumpMs),
      relative(xs.map((c) => c.dumpMs)),
    );
    m.dump[r] = { fixedMs, perGiBMs, perChangedMiBMs, coldStartMs };
  }
  // Through the origin: no pages, no time.
  const sent = cells.filter((c) => c.changedBytes > 0);
  m.send.perMiBMs = Math.max(
    0,
    sent.reduce((a, c) => a + c.sendMs * mib(c.changedBytes), 0) /
      (sent.reduce((a, c) => a + mib(c.changedBytes) ** 2, 0) || 1),
  );
  for (const r of RESTORE_MODES) {
    const xs = need(
      (c) => c.mode === r,
      `restored ${r === 'postcopy' ? 'after a post-copy switchover' : r}`,
      r === 'full'
        ? 'include cold (it restores in full)'
        : r === 'postcopy'
          ? 'include postcopy'
          : 'include precopy',
    );
    m.restore[r] = linear(xs, (c) => c.restoreMs);
    // Per second of the memory on the link only where the runs had more than one link rate to tell it apart.
    const rates = new Set(xs.map((c) => c.bandwidth)).size > 1;
    const rows = xs.map((c) => [
      1,
      gib(c.memoryBytes),
      ...(rates ? [(c.memoryBytes * 8) / c.bandwidth] : []),
    ]);
    const [fixedMs, perGiBMs, perLinkSecondMs = 0] = leastSquares(
      rows,
      xs.map((c) => c.answerMs),
    ) ?? [median(xs.map((c) => c.answerMs)), 0, 0];
    m.answer[r] = { fixedMs, perGiBMs, perLinkSecondMs };
  }
  return m;
}

/** What the model says a sample's switchover costs beyond its pages and state on the link, in ms. */
export function modelledStopMs(
  m: SwitchoverModel,
  s: Pick<SwitchoverSample, 'route' | 'mode' | 'cold' | 'memoryBytes' | 'changedBytes' | 'bandwidth'>,
): number {
  return (
    (dumpSeconds(m, s.route, s.memoryBytes, s.changedBytes, s.cold) +
      sendSeconds(m, s.changedBytes) +
      resumeSeconds(m, s.mode, s.memoryBytes, s.bandwidth)) *
    1000
  );
}

/** The same, as the live run measured it. */
export const measuredStopMs = (s: SwitchoverSample): number => s.dumpMs + s.sendMs + s.restoreMs + s.answerMs;
