import { UsageError } from './errors.ts';

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  k: 1024,
  kib: 1024,
  kb: 1000,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  mb: 1000 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  gb: 1000 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
  tb: 1000 ** 4,
};

const NUMBER_UNIT = /^\s*([0-9]+(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([a-z/]*)\s*$/i;

function split(text: string, what: string, accepted: string): [number, string] {
  const m = NUMBER_UNIT.exec(text);
  if (!m) throw new UsageError(`${what} "${text}" is not a number with a unit; accepted: ${accepted}`);
  return [Number(m[1]), m[2]];
}

/** Sizes in bytes: "512MiB", "1GiB", "4096", "1.5GB". K/M/G alone are binary, as in most container tools. */
export function parseSize(text: string, what = 'size'): number {
  const accepted =
    'a number with B, KiB, MiB, GiB, TiB (binary), KB, MB, GB, TB (decimal) or K, M, G (binary)';
  const [n, unit] = split(text, what, accepted);
  const mult = SIZE_UNITS[unit === '' ? 'b' : unit.toLowerCase()];
  if (mult === undefined)
    throw new UsageError(`${what} "${text}" has an unknown unit "${unit}"; accepted: ${accepted}`);
  const bytes = Math.round(n * mult);
  if (!Number.isFinite(bytes)) throw new UsageError(`${what} "${text}" is too large`);
  return bytes;
}

const RATE_UNITS: Record<string, number> = {
  '': 1,
  bit: 1,
  bps: 1,
  'bit/s': 1,
  kbit: 1e3,
  'kbit/s': 1e3,
  mbit: 1e6,
  'mbit/s': 1e6,
  gbit: 1e9,
  'gbit/s': 1e9,
  // Mbps as network equipment writes it: megabits per second.
  kbps: 1e3,
  mbps: 1e6,
  gbps: 1e9,
  'kb/s': 8e3,
  'mb/s': 8e6,
  'gb/s': 8e9,
};
/** Bytes per second written with a capital B and "ps" (MBps), told apart from Mbps (bits) by case. */
const BYTE_PS: Record<string, number> = { kBps: 8e3, KBps: 8e3, MBps: 8e6, GBps: 8e9 };

/** Link speeds in bit/s: "100Mbit", "100Mbps", "1Gbit", "12.5MB/s", "12.5MBps", "1e8". */
export function parseBandwidth(text: string, what = 'bandwidth'): number {
  const accepted =
    'a number with bit, kbit, Mbit, Gbit, Mbps, Gbps (bit/s) or kB/s, MB/s, GB/s, MBps (bytes/s)';
  const [n, unit] = split(text, what, accepted);
  const mult = BYTE_PS[unit] ?? RATE_UNITS[unit.toLowerCase()];
  if (mult === undefined)
    throw new UsageError(`${what} "${text}" has an unknown unit "${unit}"; accepted: ${accepted}`);
  const bits = n * mult;
  if (!(bits > 0))
    throw new UsageError(`${what} "${text}" must be greater than zero; accepted: ${accepted}, e.g. 100Mbit`);
  return bits;
}

/** Dirty rates in bytes/s: "12MB/s", "12MB", "500kB/s"; decimal units, as the published research (MBDPC, U2CMigration) states them. */
export function parseRate(text: string, what = 'rate'): number {
  const accepted = 'a number with B/s, kB/s, MB/s or GB/s (decimal)';
  const [n, unit] = split(text, what, accepted);
  const u = unit.toLowerCase().replace(/\/s$/, '');
  const mult = { '': 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9 }[u];
  if (mult === undefined)
    throw new UsageError(`${what} "${text}" has an unknown unit "${unit}"; accepted: ${accepted}`);
  return n * mult;
}

/** Durations in seconds: "300ms", "1.5s", "2m", "50us". A bare number is seconds. */
export function parseDuration(text: string, what = 'duration'): number {
  const accepted = 'a number with us, ms, s or m';
  const [n, unit] = split(text, what, accepted);
  const mult = { '': 1, s: 1, ms: 1e-3, us: 1e-6, m: 60 }[unit.toLowerCase()];
  if (mult === undefined)
    throw new UsageError(`${what} "${text}" has an unknown unit "${unit}"; accepted: ${accepted}`);
  return n * mult;
}

export function parseCount(text: string, what: string, min = 0): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min)
    throw new UsageError(`${what} "${text}" must be a whole number >= ${min}`);
  return n;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)}${units[i]}`;
}

export function formatBandwidth(bits: number): string {
  if (bits >= 1e9 && bits % 1e8 === 0) return `${bits / 1e9}Gbit`;
  if (bits >= 1e6) return `${+(bits / 1e6).toFixed(2)}Mbit`;
  if (bits >= 1e3) return `${+(bits / 1e3).toFixed(2)}kbit`;
  return `${bits}bit`;
}

export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return '-';
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)}ms`;
  return `${s.toFixed(2)}s`;
}
