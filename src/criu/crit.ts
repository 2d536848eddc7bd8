/**
 * crit's view of an image: the JSON that `crit decode -i X [--pretty]` (CRIU 4.2's pycriu) prints, computed from
 * precog's decoded entries. Used to check precog's decoder against crit on real dumps, and to print images the
 * way CRIU users know them.
 *
 * crit's rules (pycriu images/pb2dict.py), applied here from the (criu) options of precog's .proto files:
 * - only fields present in the image are printed, in field-number order; enums by name; bytes as base64 with a
 *   line break every 76 characters (Python's base64.encodebytes); all integers as JSON numbers, except with
 *   --pretty:
 * - (criu).hex fields as "0x..." (lowercase); the option also applies to every integer inside a message field
 *   that carries it (thread_info.gpregs);
 * - (criu).dev as "major:minor" (odev: the old dev_t layout);
 * - (criu).flags as names joined by " | " with the unnamed rest as "0x..." ("" for 0);
 * - (criu).dict = "gen" (task_state): 1 Alive, 3 Zombie, 6 Stopped, other values as numbers.
 * The output of critJson is the text crit writes: Python's json.dump with indent 4 (pretty) or on one line, with
 * ensure_ascii escaping.
 */
import { isMessageValue, UNKNOWN_FIELDS, type Message, type Value } from './codec.ts';
import { entryTypeName, type CriuImage } from './images.ts';
import { criuSchema, type FieldSpec, type MessageSpec } from './schema.ts';

export type CritValue = number | bigint | boolean | string | CritValue[] | { [key: string]: CritValue };

const FLAG_MAPS: Record<string, [string, number][]> = {
  'mmap.prot': [
    ['PROT_READ', 0x1],
    ['PROT_WRITE', 0x2],
    ['PROT_EXEC', 0x4],
  ],
  'mmap.flags': [
    ['MAP_SHARED', 0x1],
    ['MAP_PRIVATE', 0x2],
    // Since CRIU 4.2 (Linux 6.11's droppable mappings: glibc >= 2.41 keeps its getrandom states in one).
    ['MAP_DROPPABLE', 0x08],
    ['MAP_ANON', 0x20],
    ['MAP_GROWSDOWN', 0x0100],
  ],
  'mmap.status': [
    ['VMA_AREA_NONE', 0],
    ['VMA_AREA_REGULAR', 1 << 0],
    ['VMA_AREA_STACK', 1 << 1],
    ['VMA_AREA_VSYSCALL', 1 << 2],
    ['VMA_AREA_VDSO', 1 << 3],
    ['VMA_AREA_HEAP', 1 << 5],
    ['VMA_FILE_PRIVATE', 1 << 6],
    ['VMA_FILE_SHARED', 1 << 7],
    ['VMA_ANON_SHARED', 1 << 8],
    ['VMA_ANON_PRIVATE', 1 << 9],
    ['VMA_AREA_SYSVIPC', 1 << 10],
    ['VMA_AREA_SOCKET', 1 << 11],
    ['VMA_AREA_VVAR', 1 << 12],
    ['VMA_AREA_AIORING', 1 << 13],
    ['VMA_AREA_MEMFD', 1 << 14],
    ['VMA_AREA_SHSTK', 1 << 15],
    // Since CRIU 4.2 (the [uprobes] area, dumped only with --allow-uprobes).
    ['VMA_AREA_UPROBES', 1 << 17],
    ['VMA_UNSUPP', 2 ** 31],
  ],
  'rfile.flags': [
    ['O_WRONLY', 0o1],
    ['O_RDWR', 0o2],
    ['O_CREAT', 0o100],
    ['O_EXCL', 0o200],
    ['O_NOCTTY', 0o400],
    ['O_TRUNC', 0o1000],
    ['O_APPEND', 0o2000],
    ['O_NONBLOCK', 0o4000],
    ['O_DSYNC', 0o10000],
    ['FASYNC', 0o20000],
    ['O_DIRECT', 0o40000],
    ['O_LARGEFILE', 0o100000],
    ['O_DIRECTORY', 0o200000],
    ['O_NOFOLLOW', 0o400000],
    ['O_NOATIME', 0o1000000],
    ['O_CLOEXEC', 0o2000000],
  ],
  'pmap.flags': [
    ['PE_PARENT', 1 << 0],
    ['PE_LAZY', 1 << 1],
    ['PE_PRESENT', 1 << 2],
  ],
  'seals.flags': [
    ['F_SEAL_SEAL', 0x1],
    ['F_SEAL_SHRINK', 0x2],
    ['F_SEAL_GROW', 0x4],
    ['F_SEAL_WRITE', 0x8],
    ['F_SEAL_FUTURE_WRITE', 0x10],
  ],
};

const DICT_MAPS: Record<string, Record<string, Record<number, string>>> = {
  gen: { task_state: { 1: 'Alive', 3: 'Zombie', 6: 'Stopped' } },
  sk: {
    family: { 1: 'UNIX', 2: 'INET', 10: 'INET6', 16: 'NETLINK', 17: 'PACKET' },
    type: { 1: 'STREAM', 2: 'DGRAM', 3: 'RAW', 5: 'SEQPACKET', 10: 'PACKET' },
    state: {
      1: 'ESTABLISHED',
      2: 'SYN_SENT',
      3: 'SYN_RECV',
      4: 'FIN_WAIT1',
      5: 'FIN_WAIT2',
      6: 'TIME_WAIT',
      7: 'CLOSE',
      8: 'CLOSE_WAIT',
      9: 'LAST_ACK',
      10: 'LISTEN',
    },
    proto: { 0: 'IP', 6: 'TCP', 17: 'UDP', 136: 'UDPLITE' },
  },
};

function hex(v: bigint): string {
  return v < 0n ? `-0x${(-v).toString(16)}` : `0x${v.toString(16)}`;
}

function mapFlags(value: bigint, map: [string, number][]): string {
  const names = map.filter(([, bit]) => (value & BigInt(bit)) !== 0n).map(([name]) => name);
  const rest = value & ~map.reduce((acc, [, bit]) => acc | BigInt(bit), 0n);
  if (rest) names.push(hex(rest));
  return names.join(' | ');
}

/** Python's base64.encodebytes: lines of 76 characters, each ended by a newline. */
function encodeBytes(b: Buffer): string {
  const s = b.toString('base64');
  let out = '';
  for (let i = 0; i < s.length; i += 76) out += s.slice(i, i + 76) + '\n';
  return out;
}

function critScalar(field: FieldSpec, v: Value, pretty: boolean, isHex: boolean): CritValue {
  if (field.type === 'message') {
    if (!isMessageValue(v) || !field.message) throw new TypeError(`${field.name}: expected a message`);
    return critMessage(v, field.message, pretty, isHex);
  }
  if (field.type === 'bytes') {
    if (!Buffer.isBuffer(v)) throw new TypeError(`${field.name}: expected bytes`);
    if (field.criu.conv)
      throw new TypeError(`${field.name}: crit conversion "${field.criu.conv}" is not supported`);
    return encodeBytes(v);
  }
  if (field.type === 'enum') return field.enumSpec?.names.get(Number(v)) ?? Number(v);
  if (field.type === 'bool' || field.type === 'string') return v as boolean | string;
  if (field.type === 'float' || field.type === 'double') return v as number;
  const n = typeof v === 'bigint' ? v : BigInt(v as number);
  if (pretty) {
    if (isHex) return hex(n);
    if (field.criu.dev) {
      if (field.criu.odev) {
        const major = ((n >> 8n) & 0xfffn) | ((n >> 32n) & ~0xfffn);
        const minor = (n & 0xffn) | ((n >> 12n) & ~0xffn);
        return `${major}:${minor}`;
      }
      return `${n >> 20n}:${n & ((1n << 20n) - 1n)}`;
    }
    if (field.criu.flags) {
      const map = FLAG_MAPS[field.criu.flags];
      return map ? mapFlags(n, map) : hex(n);
    }
    if (field.criu.dict) {
      const name = DICT_MAPS[field.criu.dict]?.[field.name]?.[Number(n)];
      if (name !== undefined) return name;
    }
  }
  return v as number | bigint;
}

function critMessage(
  msg: Message,
  spec: MessageSpec,
  pretty: boolean,
  isHex: boolean,
): Record<string, CritValue> {
  if (msg[UNKNOWN_FIELDS]?.length)
    throw new TypeError(
      `${spec.name} has fields precog does not model (${msg[UNKNOWN_FIELDS].map((u) => u.id).join(', ')})`,
    );
  const out: Record<string, CritValue> = {};
  for (const field of spec.fields) {
    const v = msg[field.name];
    if (v === undefined) continue;
    const hexHere = isHex || field.criu.hex === true;
    if (field.repeated) {
      if (!Array.isArray(v)) throw new TypeError(`${spec.name}.${field.name}: expected an array`);
      // crit lists only non-empty repeated fields (protobuf's ListFields).
      if (v.length === 0) continue;
      if (pretty && field.criu.ipadd)
        throw new TypeError(`${field.name}: crit's IP address form is not supported`);
      out[field.name] = v.map((item) => critScalar(field, item, pretty, hexHere));
    } else {
      out[field.name] = critScalar(field, v, pretty, hexHere);
    }
  }
  return out;
}

/** One decoded entry as crit prints it. `typeName` is the entry's message type (e.g. "core_entry"). */
export function critEntry(msg: Message, typeName: string, pretty: boolean): Record<string, CritValue> {
  return critMessage(msg, criuSchema().message(typeName), pretty, false);
}

/** A decoded image as `crit decode` prints it: { magic, entries }. Only for modelled image types. */
export function critImage(image: CriuImage, pretty: boolean): { magic: string; entries: CritValue[] } {
  if (!image.modelled) throw new TypeError(`precog does not model ${image.magic} images`);
  return {
    magic: image.magic,
    entries: image.entries.map((entry, i) => {
      const name = entryTypeName(image.magic, i);
      if (!name) throw new TypeError(`no entry type for ${image.magic}`);
      return critEntry(entry, name, pretty);
    }),
  };
}

function pyString(s: string): string {
  // JSON.stringify escapes quotes, backslashes and control characters like Python's json; ensure_ascii also
  // escapes everything outside printable ASCII (DEL included) as \uXXXX (UTF-16 units, as JSON.stringify keeps).
  return JSON.stringify(s).replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/** The text Python's json.dump writes for a value: indent 4 (pretty) or one line with ", " and ": ". */
export function critJson(
  value: CritValue | { magic: string; entries: CritValue[] },
  pretty: boolean,
): string {
  const dump = (v: CritValue, level: number): string => {
    if (typeof v === 'string') return pyString(v);
    if (typeof v === 'number' || typeof v === 'bigint') return String(v);
    if (typeof v === 'boolean') return v ? 'true' : 'false';
    const pad = (n: number) => (pretty ? '\n' + ' '.repeat(4 * n) : '');
    const sep = pretty ? ',' : ', ';
    if (Array.isArray(v)) {
      if (v.length === 0) return '[]';
      return `[${pad(level + 1)}${v.map((x) => dump(x, level + 1)).join(sep + pad(level + 1))}${pad(level)}]`;
    }
    const keys = Object.keys(v);
    if (keys.length === 0) return '{}';
    const items = keys.map((k) => `${pyString(k)}: ${dump(v[k], level + 1)}`);
    return `{${pad(level + 1)}${items.join(sep + pad(level + 1))}${pad(level)}}`;
  };
  return dump(value as CritValue, 0);
}
