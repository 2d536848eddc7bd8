/** A page encoding. Each codec has a one-byte tag carried in every page record on the wire. */
export interface Codec {
  readonly name: string;
  readonly tag: number;
  /**
   * Encodes one page into out at offset and returns the bytes written, or -1 when this codec does not apply
   * to the page (the caller then tries the next codec of its chain; raw always applies).
   */
  encode(page: Uint8Array, out: Uint8Array, offset: number, lastSent?: Uint8Array): number;
  /** Decodes an encoded page into out (exactly one page long). */
  decode(encoded: Uint8Array, out: Uint8Array, lastSent?: Uint8Array): void;
  /** Upper bound of the encoded size of a page of pageSize bytes. */
  maxEncodedSize(pageSize: number): number;
}

export const CODEC_TAG = { raw: 0, zero: 1 } as const;
