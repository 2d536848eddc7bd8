import { InputError } from '../util/errors.ts';
import { CODEC_TAG, type Codec } from './types.ts';

let zeroPage = Buffer.alloc(4096);

function isZero(page: Uint8Array): boolean {
  if (zeroPage.length !== page.length) zeroPage = Buffer.alloc(page.length);
  return Buffer.compare(page, zeroPage) === 0;
}

/** Zero-page elision: a page of zeros travels as its id and tag alone. */
export const zeroCodec: Codec = {
  name: 'zero',
  tag: CODEC_TAG.zero,
  encode(page) {
    return isZero(page) ? 0 : -1;
  },
  decode(encoded, out) {
    if (encoded.length !== 0)
      throw new InputError(`zero page record carries ${encoded.length} bytes, expected 0`);
    out.fill(0);
  },
  maxEncodedSize: () => 0,
};
