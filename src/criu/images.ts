/**
 * Reading and writing CRIU image files.
 *
 * An image file is: [head magic] type magic, then entries, each a u32 little-endian size followed by that many
 * bytes of one protobuf message (see magic.ts for which files carry which head). The message type of the entries
 * follows from the type magic (ENTRY_TYPES); pagemap images are the exception: their first entry is a pagemap_head,
 * the rest are pagemap_entry.
 *
 * Types precog models are decoded into plain objects (codec.ts: numbers, bigints, Buffers; field names as crit
 * prints them) and re-encode byte for byte. Types it does not model still have their entries framed (kept as raw
 * payloads) so a directory can be copied through precog unchanged; images whose entries are followed by extra
 * data (magic.ts TYPES_WITH_PAYLOAD) are kept whole when not modelled.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { InputError } from '../util/errors.ts';
import { decodeMessage, encodeMessage, type Message } from './codec.ts';
import {
  headMagicOf,
  IMG_COMMON_MAGIC,
  IMG_SERVICE_MAGIC,
  imageTypeOfMagic,
  isRawImageName,
  MAGIC,
  TYPES_WITH_PAYLOAD,
  type ImageType,
} from './magic.ts';
import { criuSchema, type MessageSpec } from './schema.ts';

/** Entry message type of each image type precog models (PAGEMAP: entries after the first pagemap_head). */
export const ENTRY_TYPES: Partial<Record<ImageType, string>> = {
  INVENTORY: 'inventory_entry',
  PSTREE: 'pstree_entry',
  PAGEMAP: 'pagemap_entry',
  MM: 'mm_entry',
  VMAS: 'vma_entry',
  CORE: 'core_entry',
  IDS: 'task_kobj_ids_entry',
  CREDS: 'creds_entry',
  SIGACT: 'sa_entry',
  ITIMERS: 'itimer_entry',
  POSIX_TIMERS: 'posix_timer_entry',
  RLIMIT: 'rlimit_entry',
  FS: 'fs_entry',
  FDINFO: 'fdinfo_entry',
  FILES: 'file_entry',
  REG_FILES: 'reg_file_entry',
  PIPES: 'pipe_entry',
  CGROUP: 'cgroup_entry',
  SECCOMP: 'seccomp_entry',
  UTSNS: 'utsns_entry',
  TIMENS: 'timens_entry',
  PIDNS: 'pidns_entry',
  IPC_VAR: 'ipc_var_entry',
  STATS: 'stats_entry',
};

/** The image types precog decodes into messages (others are framed but kept raw). */
export function modelledTypes(): ImageType[] {
  return Object.keys(ENTRY_TYPES) as ImageType[];
}

export function isModelled(type: ImageType): boolean {
  return ENTRY_TYPES[type] !== undefined;
}

/** The message type of entry `index` of an image of `type`, or undefined when precog does not model it. */
export function entryTypeName(type: ImageType, index: number): string | undefined {
  if (type === 'PAGEMAP' && index === 0) return 'pagemap_head';
  return ENTRY_TYPES[type];
}

function entrySpec(type: ImageType, index: number): MessageSpec | undefined {
  const name = entryTypeName(type, index);
  return name ? criuSchema().message(name) : undefined;
}

export interface CriuImage {
  /** crit's name of the image type magic ("CORE", "PAGEMAP", ...), as in crit's {"magic": ..., "entries": ...}. */
  magic: ImageType;
  /** The type magic as a number (MAGIC[magic]). */
  magicNumber: number;
  /** IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, or null (inventory.img). */
  head: number | null;
  /** Whether the entries were decoded (the type is modelled). */
  modelled: boolean;
  /** Decoded entries (modelled types). For PAGEMAP, entries[0] is the pagemap_head. */
  entries: Message[];
  /** Entry payloads, undecoded (types precog does not model). */
  rawEntries: Buffer[];
  /** File offset of each entry's size field (entries or rawEntries), for error messages about an entry. */
  offsets: number[];
  /** Everything after the magic, for unmodelled types whose entries carry extra data; else undefined. */
  body?: Buffer;
}

export interface ReadOptions {
  /** Name used in error messages when reading from a buffer (default "image"). */
  label?: string;
}

/**
 * Reads a CRIU image from a file or a buffer. Malformed images raise an InputError that names the file, the
 * offset and what was expected there.
 */
export function readImage(src: string | Buffer, opts: ReadOptions = {}): CriuImage {
  const label = typeof src === 'string' ? src : (opts.label ?? 'image');
  if (typeof src === 'string' && isRawImageName(basename(src)))
    throw new InputError(
      `${src}: at offset 0: a raw image (page data, tarball or tool dump) has no magic and no entries; ` +
        `expected a protobuf image (read pages-N.img with readPages)`,
    );
  const buf = typeof src === 'string' ? readFileSync(src) : src;
  const bad = (offset: number, message: string): InputError =>
    new InputError(`${label}: at offset ${offset}: ${message}`);
  if (buf.length < 4) throw bad(0, `expected a 4-byte image magic, the file has ${buf.length} bytes`);
  let off = 0;
  let head: number | null = null;
  let magic = buf.readUInt32LE(0);
  if (magic === IMG_COMMON_MAGIC || magic === IMG_SERVICE_MAGIC) {
    head = magic;
    if (buf.length < 8) throw bad(4, `expected the image type magic after the head magic, the file ends`);
    magic = buf.readUInt32LE(4);
    off = 8;
  } else {
    off = 4;
  }
  const type = imageTypeOfMagic(magic);
  if (!type) {
    throw bad(
      off - 4,
      `unknown magic 0x${magic.toString(16).padStart(8, '0')}: expected IMG_COMMON (0x54564319) or IMG_SERVICE ` +
        `(0x55105940) followed by a CRIU image type magic, or INVENTORY (0x58313116) ` +
        `(raw images such as pages-N.img have no magic and are read with readPages)`,
    );
  }
  const wantHead = headMagicOf(type);
  if (head !== wantHead) {
    const name = (m: number | null) =>
      m === null
        ? 'none'
        : m === IMG_COMMON_MAGIC
          ? 'IMG_COMMON'
          : m === IMG_SERVICE_MAGIC
            ? 'IMG_SERVICE'
            : '?';
    throw bad(0, `a ${type} image must start with head magic ${name(wantHead)}, this one has ${name(head)}`);
  }
  const image: CriuImage = {
    magic: type,
    magicNumber: magic,
    head,
    modelled: isModelled(type),
    entries: [],
    rawEntries: [],
    offsets: [],
  };
  if (!image.modelled && TYPES_WITH_PAYLOAD.has(type)) {
    image.body = Buffer.from(buf.subarray(off));
    return image;
  }
  let index = 0;
  while (off < buf.length) {
    if (buf.length - off < 4)
      throw bad(off, `entry ${index}: expected a 4-byte entry size, only ${buf.length - off} bytes left`);
    const size = buf.readUInt32LE(off);
    const start = off + 4;
    if (size > buf.length - start)
      throw bad(
        off,
        `entry ${index}: size ${size} exceeds the ${buf.length - start} bytes left in the file (truncated image?)`,
      );
    const spec = entrySpec(type, index);
    image.offsets.push(off);
    if (spec) {
      image.entries.push(
        decodeMessage(
          buf,
          spec,
          { file: label, base: 0, what: `entry ${index} (${spec.name})` },
          start,
          start + size,
        ),
      );
    } else {
      image.rawEntries.push(Buffer.from(buf.subarray(start, start + size)));
    }
    off = start + size;
    index++;
  }
  return image;
}

function headerOf(type: ImageType): Buffer {
  const head = headMagicOf(type);
  const out = Buffer.alloc(head === null ? 4 : 8);
  if (head === null) out.writeUInt32LE(MAGIC[type], 0);
  else {
    out.writeUInt32LE(head, 0);
    out.writeUInt32LE(MAGIC[type], 4);
  }
  return out;
}

/**
 * Encodes an image of `type` from its entries: decoded messages (modelled types; for PAGEMAP the pagemap_head
 * first), or already-encoded payloads as Buffers (written as they are).
 */
export function writeImage(type: ImageType, entries: readonly (Message | Buffer)[]): Buffer {
  const parts: Buffer[] = [headerOf(type)];
  entries.forEach((entry, index) => {
    let payload: Buffer;
    if (Buffer.isBuffer(entry)) payload = entry;
    else {
      const spec = entrySpec(type, index);
      if (!spec) throw new TypeError(`precog does not model ${type} entries: pass them as encoded Buffers`);
      payload = encodeMessage(entry, spec);
    }
    const size = Buffer.alloc(4);
    size.writeUInt32LE(payload.length);
    parts.push(size, payload);
  });
  return Buffer.concat(parts);
}

/** Encodes an image as read by readImage (modelled or not) back into bytes. */
export function encodeImage(image: CriuImage): Buffer {
  if (image.body) return Buffer.concat([headerOf(image.magic), image.body]);
  return writeImage(image.magic, image.modelled ? image.entries : image.rawEntries);
}
