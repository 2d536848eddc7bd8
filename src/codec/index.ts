import { UsageError, InputError } from '../util/errors.ts';
import { rawCodec } from './raw.ts';
import type { Codec } from './types.ts';
import { zeroCodec } from './zero.ts';

export type { Codec } from './types.ts';

/** Every codec by tag, for decoding whatever the peer chose. One registration line per codec. */
const BY_TAG = new Map<number, Codec>([rawCodec, zeroCodec].map((c) => [c.tag, c]));

/** The chains users can pick with --codec; the last element of each chain always applies. */
const CHAINS: Record<string, readonly Codec[]> = {
  raw: [rawCodec],
  zero: [zeroCodec, rawCodec],
};

export const CODEC_NAMES = Object.keys(CHAINS);

export function codecChain(name: string): readonly Codec[] {
  const chain = CHAINS[name];
  if (!chain) throw new UsageError(`unknown codec "${name}"; accepted: ${CODEC_NAMES.join(', ')}`);
  return chain;
}

export function codecByTag(tag: number): Codec {
  const c = BY_TAG.get(tag);
  if (!c) throw new InputError(`page record with unknown codec tag ${tag}: the peer runs a newer precog`);
  return c;
}
