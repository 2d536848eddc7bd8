import { InputError } from '../util/errors.ts';
import { CODEC_TAG, type Codec } from './types.ts';

/** The page as it is. */
export const rawCodec: Codec = {
  name: 'raw',
  tag: CODEC_TAG.raw,
  encode(page, out, offset) {
    out.set(page, offset);
    return page.length;
  },
  decode(encoded, out) {
    if (encoded.length !== out.length) {
      throw new InputError(`raw page of ${encoded.length} bytes, expected ${out.length}`);
    }
    out.set(encoded);
  },
  maxEncodedSize: (pageSize) => pageSize,
};
