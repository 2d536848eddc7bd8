import { InputError } from '../util/errors.ts';

/** A page encoding. Each codec has a one-byte tag carried in every page record on the wire. */
export interface Codec {
  readonly name: string;
  readonly tag: number;
  /**
   * Encodes one page into out at offset and returns the bytes written, or -1 when this codec does not apply
   * to the page (the caller then tries the next codec of its chain; raw always applies). lastSent is the copy of
   * the page the destination holds, when the sender knows it: delta codecs encode against it.
   */
  encode(page: Uint8Array, out: Uint8Array, offset: number, lastSent?: Uint8Array): number;
  /**
   * Decodes an encoded page into out (exactly one page long). lastSent is the destination's current copy of the
   * page, required when isDelta(encoded) says so; it may be the same memory as out.
   */
  decode(encoded: Uint8Array, out: Uint8Array, lastSent?: Uint8Array): void;
  /** Upper bound of the encoded size of a page of pageSize bytes. */
  maxEncodedSize(pageSize: number): number;
  /** True when this record is a delta: decoding it needs the destination's copy of the page. */
  isDelta?(encoded: Uint8Array): boolean;
  /** True for codecs that spend CPU to save bytes (the bandwidth-aware rule may skip them). */
  readonly compresses?: boolean;
}

export const CODEC_TAG = { raw: 0, zero: 1, xorLz4: 2, xbzrle: 3, zstd: 4 } as const;

/** First byte of xor-lz4 and zstd records: what the compressed bytes are. */
export const MODE = {
  /** The page itself. */
  page: 0,
  /** The page XOR the destination's copy of it. */
  delta: 1,
} as const;

/** A delta record arrived for a page the destination never received. */
export function noBase(codec: string): InputError {
  return new InputError(
    `${codec} delta record for a page the destination has never received: the sender's last-sent cache and ` +
      'the destination disagree (a bug in the sender, or records replayed into another migration)',
  );
}
