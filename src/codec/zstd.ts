import { compressUsingDict, createCCtx, decompress, init } from '@bokuweb/zstd-wasm';
import { InputError } from '../util/errors.ts';
import { CODEC_TAG, MODE, noBase, type Codec } from './types.ts';
import { looksIncompressible, scratch, xorInto } from './bytes.ts';

/**
 * zstd of the page (mode 0), or of the page XOR the copy the destination holds (mode 1). Record: u8 mode, then one
 * zstd frame that declares its content size. zstd runs in WebAssembly (@bokuweb/zstd-wasm): the native bindings on
 * npm either build from source at install (no compiler or download here) or create a compression context per call,
 * which dominates the cost of a 4 KiB page. One context kept for the process, with an empty dictionary, avoids it.
 * Pages that look random (looksIncompressible) are not tried.
 */
await init();
const cctx = createCCtx();
const NO_DICT = new Uint8Array(0);

export const ZSTD_DEFAULT_LEVEL = 1;
const MAGIC = 0xfd2fb528;

/** The content size a zstd frame header declares, or a reason why the frame cannot be a page. */
function frameContentSize(f: Uint8Array): number | string {
  if (f.length < 6) return `${f.length} bytes, shorter than a frame header`;
  const magic = (f[0] | (f[1] << 8) | (f[2] << 16) | (f[3] << 24)) >>> 0;
  if (magic !== MAGIC) return `bad magic 0x${magic.toString(16)}`;
  const fhd = f[4];
  if (fhd & 0x08) return 'reserved bit set in the frame header';
  const single = (fhd >> 5) & 1;
  const fcsFlag = fhd >> 6;
  const dictBytes = [0, 1, 2, 4][fhd & 3];
  if (dictBytes > 0) return 'frame needs a dictionary';
  const fcsBytes = [single, 2, 4, 8][fcsFlag];
  if (fcsBytes === 0) return 'frame does not declare its content size';
  const at = 5 + (single ? 0 : 1);
  if (at + fcsBytes > f.length) return 'truncated frame header';
  let size = 0;
  for (let k = Math.min(fcsBytes, 6) - 1; k >= 0; k--) size = size * 256 + f[at + k];
  if (fcsBytes === 8 && (f[at + 6] | f[at + 7]) !== 0) return 'content size beyond 2^48';
  if (fcsBytes === 2) size += 256;
  return size;
}

export function zstdCodec(level = ZSTD_DEFAULT_LEVEL): Codec {
  return {
    name: 'zstd',
    tag: CODEC_TAG.zstd,
    compresses: true,
    encode(page, out, offset, lastSent) {
      let input = page;
      out[offset] = MODE.page;
      if (lastSent) {
        input = scratch(page.length, 1);
        xorInto(input, page, lastSent);
        out[offset] = MODE.delta;
      }
      if (looksIncompressible(input)) return -1;
      const frame = compressUsingDict(cctx, input, NO_DICT, level);
      if (1 + frame.length > page.length - 1) return -1;
      out.set(frame, offset + 1);
      return 1 + frame.length;
    },
    decode(encoded, out, lastSent) {
      if (encoded.length < 2)
        throw new InputError(`zstd record of ${encoded.length} bytes: too short for a mode and a frame`);
      const mode = encoded[0];
      if (mode !== MODE.page && mode !== MODE.delta)
        throw new InputError(`zstd record with unknown mode ${mode} (0 page, 1 delta)`);
      if (mode === MODE.delta && !lastSent) throw noBase('zstd');
      const frame = encoded.subarray(1);
      const declared = frameContentSize(frame);
      if (declared !== out.length) {
        throw new InputError(
          `zstd record: ${typeof declared === 'string' ? declared : `frame of ${declared} bytes`}, expected a frame of one ${out.length}-byte page`,
        );
      }
      let plain: Uint8Array;
      try {
        plain = decompress(frame);
      } catch (e) {
        throw new InputError(
          `zstd record: corrupt frame (${(e as Error).message.replace('compress', 'decompress')})`,
        );
      }
      if (plain.length !== out.length)
        throw new InputError(`zstd record decodes to ${plain.length} bytes, expected ${out.length}`);
      if (mode === MODE.delta) xorInto(out, lastSent!, plain);
      else out.set(plain);
    },
    isDelta: (encoded) => encoded[0] === MODE.delta,
    maxEncodedSize: (pageSize) => pageSize - 1,
  };
}
