import { UsageError, InputError } from '../util/errors.ts';
import { parseBandwidth, parseSize } from '../util/units.ts';
import { parseSpec, take } from '../util/spec.ts';
import { rawCodec } from './raw.ts';
import type { Codec } from './types.ts';
import { xbzrleCodec } from './xbzrle.ts';
import { CODEC_NAMES, isCodecName, type CodecName } from './names.ts';
import { xorLz4Codec } from './xor-lz4.ts';
import { zeroCodec } from './zero.ts';
import { ZSTD_DEFAULT_LEVEL, zstdCodec } from './zstd.ts';

export type { Codec } from './types.ts';

/** Every codec by tag, for decoding whatever the peer chose. One registration line per codec. */
const BY_TAG = new Map<number, Codec>(
  [rawCodec, zeroCodec, xorLz4Codec, xbzrleCodec, zstdCodec()].map((c) => [c.tag, c]),
);

export const DEFAULT_CACHE_BYTES = 64 * 1024 ** 2;

/** How a chain is run by the BatchWriter. */
export interface ChainOptions {
  /** Bytes of last-sent page copies the source keeps for delta codecs (0: none). */
  cacheBytes: number;
  /** Bandwidth-aware choice (src/codec/adaptive.ts): compress only when it shortens the transfer. */
  adaptive: boolean;
  /** Encode throughput (bytes/s) the adaptive rule assumes instead of measuring it (reproducible emulator runs). */
  cpuRate?: number;
}

/** A codec chain (tried in order; the last always applies) with how to run it. */
export type CodecChain = readonly Codec[] & { readonly spec: string; readonly options: ChainOptions };

interface ChainDef {
  about: string;
  delta: boolean;
  params: string[];
  build: (level: number) => readonly Codec[];
}

/** The chains users can pick with --codec; the last element of each chain always applies. */
const CHAINS: Record<CodecName, ChainDef> = {
  raw: { about: 'the page as it is', delta: false, params: [], build: () => [rawCodec] },
  zero: {
    about: 'zero-page elision, then raw',
    delta: false,
    params: [],
    build: () => [zeroCodec, rawCodec],
  },
  'xor-lz4': {
    about: 'zero, then LZ4 of the XOR with the last-sent copy (LZ4 of the page on a first send), then raw',
    delta: true,
    params: ['cache', 'cpu'],
    build: () => [zeroCodec, xorLz4Codec, rawCodec],
  },
  xbzrle: {
    about: "zero, then QEMU's XBZRLE against the last-sent copy, then raw",
    delta: true,
    params: ['cache', 'cpu'],
    build: () => [zeroCodec, xbzrleCodec, rawCodec],
  },
  zstd: {
    about: 'zero, then zstd of the XOR with the last-sent copy (of the page on a first send), then raw',
    delta: true,
    params: ['cache', 'cpu', 'level'],
    build: (level) => [zeroCodec, zstdCodec(level), rawCodec],
  },
};

export { CODEC_NAMES };

/** The --codec syntax, for help texts. */
export const CODEC_SYNTAX = `${CODEC_NAMES.join(', ')}; delta chains take :cache=64MiB (last-sent copies kept at the source, 0 for none), :adaptive (compress only when it shortens the transfer), :cpu=RATE (adaptive with a fixed encode throughput, e.g. 1GB/s), zstd :level=N`;

/** Parses a --codec value: NAME[:cache=SIZE][:adaptive][:cpu=RATE][:level=N] (docs/codecs.md). */
export function codecChain(text: string): CodecChain {
  const spec = parseSpec(text, 'codec');
  const def = isCodecName(spec.name) ? CHAINS[spec.name] : undefined;
  if (!def) throw new UsageError(`unknown codec "${spec.name}"; accepted: ${CODEC_NAMES.join(', ')}`);
  for (const key of spec.params.keys()) {
    if (!def.params.includes(key))
      throw new UsageError(
        `unknown codec parameter "${key}" for ${spec.name}; accepted: ${def.params.join(', ') || 'none'}`,
      );
  }
  const cacheBytes = take(spec, 'cache', parseSize, def.delta ? DEFAULT_CACHE_BYTES : 0);
  const cpu = take(spec, 'cpu', (v, what) => parseBandwidth(v, what) / 8, 0);
  const level = take(spec, 'level', (v, what) => parseLevel(v, what), ZSTD_DEFAULT_LEVEL);
  for (const w of spec.words) {
    if (w !== 'adaptive')
      throw new UsageError(`codec ${spec.name} takes :adaptive and key=value parameters, not "${w}"`);
    if (!def.delta)
      throw new UsageError(`codec ${spec.name} does not compress: :adaptive applies to ${deltaNames()}`);
  }
  const options: ChainOptions = {
    cacheBytes,
    adaptive: spec.words.includes('adaptive') || cpu > 0,
    ...(cpu > 0 ? { cpuRate: cpu } : {}),
  };
  return Object.assign([...def.build(level)], { spec: text, options });
}

function parseLevel(v: string, what: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < -7 || n > 19)
    throw new UsageError(`${what} "${v}" must be a whole number from -7 to 19`);
  return n;
}

function deltaNames(): string {
  return CODEC_NAMES.filter((n) => CHAINS[n].delta).join(', ');
}

/** One line per chain, for help texts and docs. */
export function describeCodecs(): string[] {
  return CODEC_NAMES.map((n) => `${n}: ${CHAINS[n].about}`);
}

/** The options of a chain made by codecChain, or the defaults of a plain array of codecs. */
export function chainOptions(chain: readonly Codec[]): ChainOptions {
  const o = (chain as Partial<CodecChain>).options;
  return o ?? { cacheBytes: chain.some((c) => c.isDelta) ? DEFAULT_CACHE_BYTES : 0, adaptive: false };
}

export function codecByTag(tag: number): Codec {
  const c = BY_TAG.get(tag);
  if (!c) throw new InputError(`page record with unknown codec tag ${tag}: the peer runs a newer precog`);
  return c;
}
