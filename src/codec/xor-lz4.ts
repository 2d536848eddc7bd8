import { InputError } from '../util/errors.ts';
import { decodeBlock, pageBlock, xorDeltaBlock } from './lz4.ts';
import { CODEC_TAG, MODE, noBase, type Codec } from './types.ts';
import { overlaps, scratch, xorInto } from './bytes.ts';

/**
 * MBDPC's page codec: LZ4 of the page XOR the copy the destination holds (mode 1), or LZ4 of the page itself
 * (mode 0) on a first send or a miss of the sender's last-sent cache. Record: u8 mode, then an LZ4 block. Applies
 * only when the record is shorter than the page; otherwise the chain goes on to raw.
 */
export const xorLz4Codec: Codec = {
  name: 'xor-lz4',
  tag: CODEC_TAG.xorLz4,
  compresses: true,
  encode(page, out, offset, lastSent) {
    const limit = offset + page.length - 1;
    if (lastSent) {
      out[offset] = MODE.delta;
      const n = xorDeltaBlock(page, lastSent, out, offset + 1, limit);
      if (n >= 0) return n + 1;
      // Rewritten beyond what a delta saves: the page may still compress on its own.
    }
    out[offset] = MODE.page;
    const n = pageBlock(page, out, offset + 1, limit);
    return n < 0 ? -1 : n + 1;
  },
  decode(encoded, out, lastSent) {
    if (encoded.length < 2)
      throw new InputError(`xor-lz4 record of ${encoded.length} bytes: too short for a mode and a block`);
    const block = encoded.subarray(1);
    switch (encoded[0]) {
      case MODE.page:
        decodeBlock(block, out, 'xor-lz4 page record');
        return;
      case MODE.delta: {
        if (!lastSent) throw noBase('xor-lz4');
        if (!overlaps(out, lastSent)) {
          decodeBlock(block, out, 'xor-lz4 delta record', lastSent);
          return;
        }
        // Decoding over the base itself: the delta first, then the XOR.
        const delta = scratch(out.length);
        decodeBlock(block, delta, 'xor-lz4 delta record');
        xorInto(out, lastSent, delta);
        return;
      }
      default:
        throw new InputError(`xor-lz4 record with unknown mode ${encoded[0]} (0 page, 1 delta)`);
    }
  },
  isDelta: (encoded) => encoded[0] === MODE.delta,
  maxEncodedSize: (pageSize) => pageSize - 1,
};
