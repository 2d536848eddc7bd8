import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../util/errors.ts';

/**
 * System-level features of one round, in this fixed order (RoundObservation.system, the attention model's input and
 * its model file's "features" list all follow it). Every value is normalised to [0, 1]:
 *   rates (per second) as log10(1 + x) / 6, clipped at 1 (so 1e6/s and above read 1);
 *   shares as they are.
 *
 *   dirty-share   pages the process wrote in the round / its pages
 *   dirty-rate    pages the process wrote per second
 *   pgfault       /proc/vmstat pgfault per second (minor + major page faults, whole host)
 *   pgmajfault    /proc/vmstat pgmajfault per second
 *   pgactivate    /proc/vmstat pgactivate per second (pages promoted to the active LRU list)
 *   swap          /proc/vmstat pswpin + pswpout per second
 *   refault       /proc/vmstat workingset_refault (or _anon + _file) per second
 *   cpu-user      share of CPU time spent in user + nice since the last sample (/proc/stat, all CPUs)
 *   cpu-system    share in system + irq + softirq
 *   cpu-iowait    share in iowait
 */
export const SYSTEM_FEATURES = [
  'dirty-share',
  'dirty-rate',
  'pgfault',
  'pgmajfault',
  'pgactivate',
  'swap',
  'refault',
  'cpu-user',
  'cpu-system',
  'cpu-iowait',
] as const;

export type SystemFeature = (typeof SYSTEM_FEATURES)[number];

export const SYSTEM_FEATURE_COUNT = SYSTEM_FEATURES.length;

const F = Object.fromEntries(SYSTEM_FEATURES.map((n, i) => [n, i])) as Record<SystemFeature, number>;

/** Normalised rate: log10(1 + perSecond) / 6, in [0, 1]. */
export function rateFeature(perSecond: number): number {
  if (!(perSecond > 0)) return 0;
  return Math.min(1, Math.log10(1 + perSecond) / 6);
}

/** Writes the two features every source can compute itself: the process's dirty share and dirty rate. */
function setDirty(out: Float32Array, dirtyPages: number, pageCount: number, seconds: number): void {
  out[F['dirty-share']] = pageCount > 0 ? Math.min(1, Math.max(0, dirtyPages / pageCount)) : 0;
  out[F['dirty-rate']] = seconds > 0 ? rateFeature(dirtyPages / seconds) : 0;
}

/**
 * EMULATED system features, for the emulator and for traces that recorded none: derived from the round's dirty
 * count alone. dirty-share and dirty-rate are exact; pgfault is the dirty rate (a stand-in: under write tracking each
 * first write to a page after a round starts costs one minor fault); every other feature is 0 (an idle rest of the
 * host). A model trained on these learns nothing from the host-wide counters; see docs/u2c.md.
 */
export function emulatedSystemFeatures(
  dirtyPages: number,
  pageCount: number,
  seconds: number,
  out: Float32Array = new Float32Array(SYSTEM_FEATURE_COUNT),
): Float32Array {
  out.fill(0);
  setDirty(out, dirtyPages, pageCount, seconds);
  out[F.pgfault] = out[F['dirty-rate']];
  return out;
}

interface Counters {
  at: number;
  pgfault: number;
  pgmajfault: number;
  pgactivate: number;
  swap: number;
  refault: number;
  cpuUser: number;
  cpuSystem: number;
  cpuIowait: number;
  cpuTotal: number;
}

export interface SystemSamplerOptions {
  /** Where procfs is mounted (tests point it at a directory of fake files). */
  proc: string;
  /** Clock in seconds. */
  now: () => number;
}

/**
 * Live system features from /proc/vmstat and /proc/stat: each sample() returns the deltas since the previous call
 * (or since construction), per second and normalised, in SYSTEM_FEATURES order.
 */
export class SystemSampler {
  private readonly o: SystemSamplerOptions;
  private last: Counters;

  constructor(options: Partial<SystemSamplerOptions> = {}) {
    this.o = { proc: '/proc', now: () => performance.now() / 1000, ...options };
    this.last = this.read();
  }

  /**
   * Features since the last sample. dirtyPages and pageCount describe the process being migrated over the same
   * interval (the dirty bitmap of its round); leave them 0 when unknown.
   */
  sample(
    dirtyPages = 0,
    pageCount = 0,
    out: Float32Array = new Float32Array(SYSTEM_FEATURE_COUNT),
  ): Float32Array {
    const now = this.read();
    const prev = this.last;
    this.last = now;
    const dt = now.at - prev.at;
    out.fill(0);
    setDirty(out, dirtyPages, pageCount, dt);
    if (dt > 0) {
      const rate = (a: number, b: number): number => rateFeature(Math.max(0, a - b) / dt);
      out[F.pgfault] = rate(now.pgfault, prev.pgfault);
      out[F.pgmajfault] = rate(now.pgmajfault, prev.pgmajfault);
      out[F.pgactivate] = rate(now.pgactivate, prev.pgactivate);
      out[F.swap] = rate(now.swap, prev.swap);
      out[F.refault] = rate(now.refault, prev.refault);
    }
    const total = now.cpuTotal - prev.cpuTotal;
    if (total > 0) {
      const share = (a: number, b: number): number => Math.min(1, Math.max(0, (a - b) / total));
      out[F['cpu-user']] = share(now.cpuUser, prev.cpuUser);
      out[F['cpu-system']] = share(now.cpuSystem, prev.cpuSystem);
      out[F['cpu-iowait']] = share(now.cpuIowait, prev.cpuIowait);
    }
    return out;
  }

  private read(): Counters {
    const vm = parseVmstat(this.readProc('vmstat'));
    const cpu = parseCpuLine(this.readProc('stat'));
    const refault =
      vm.get('workingset_refault') ??
      (vm.get('workingset_refault_anon') ?? 0) + (vm.get('workingset_refault_file') ?? 0);
    return {
      at: this.o.now(),
      pgfault: vm.get('pgfault') ?? 0,
      pgmajfault: vm.get('pgmajfault') ?? 0,
      pgactivate: vm.get('pgactivate') ?? 0,
      swap: (vm.get('pswpin') ?? 0) + (vm.get('pswpout') ?? 0),
      refault,
      ...cpu,
    };
  }

  private readProc(name: string): string {
    const path = join(this.o.proc, name);
    try {
      return readFileSync(path, 'utf8');
    } catch (e) {
      throw new InputError(
        `cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? String(e)}): live system features need Linux procfs; without it leave RoundObservation.system unset and the predictors emulate them`,
      );
    }
  }
}

function parseVmstat(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    const sp = line.indexOf(' ');
    if (sp <= 0) continue;
    const v = Number(line.slice(sp + 1));
    if (Number.isFinite(v)) m.set(line.slice(0, sp), v);
  }
  return m;
}

/** The aggregate "cpu" line of /proc/stat: user nice system idle iowait irq softirq steal (guest is inside user). */
function parseCpuLine(text: string): Pick<Counters, 'cpuUser' | 'cpuSystem' | 'cpuIowait' | 'cpuTotal'> {
  const line = text.split('\n').find((l) => l.startsWith('cpu '));
  const f = line ? line.trim().split(/\s+/).slice(1, 9).map(Number) : [];
  if (f.length < 4 || f.some((x) => !Number.isFinite(x)))
    throw new InputError(`/proc/stat has no aggregate "cpu" line with at least 4 counters`);
  const [user, nice, system, idle, iowait = 0, irq = 0, softirq = 0, steal = 0] = f;
  return {
    cpuUser: user + nice,
    cpuSystem: system + irq + softirq,
    cpuIowait: iowait,
    cpuTotal: user + nice + system + idle + iowait + irq + softirq + steal,
  };
}
