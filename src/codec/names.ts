/**
 * The codec chains users can pick with --codec, by name: a module of its own so that help texts list them without
 * loading the codecs (lz4, zstd). src/codec/index.ts defines one chain for each name, no more (its table is typed by
 * CodecName).
 */
export const CODEC_NAMES = ['raw', 'zero', 'xor-lz4', 'xbzrle', 'zstd'] as const;
export type CodecName = (typeof CODEC_NAMES)[number];

export function isCodecName(name: string): name is CodecName {
  return (CODEC_NAMES as readonly string[]).includes(name);
}
