/**
 * Protobuf wire format (proto2) for CRIU images, driven by the field tables of schema.ts.
 *
 * Why not protobufjs's own encode/decode: precog must write back images byte for byte (CRIU's protobuf-c writes
 * fields in field-number order, repeated scalars unpacked, negative int32 as 10-byte varints), keep fields that its
 * .proto files do not model, and say at which file offset a malformed image breaks. protobufjs parses the .proto
 * files and resolves types; this module reads and writes the bytes.
 *
 * Values: 32-bit integers and enums are numbers, 64-bit integers are bigints, bool is boolean, string is string,
 * bytes are Buffers, messages are plain objects keyed by field name, repeated fields are arrays. A field that was
 * absent in the image is absent from the object (proto2 presence: CRIU writes an optional field only when it is
 * set, even to its default). Fields with numbers the schema does not know are kept under the UNKNOWN_FIELDS symbol
 * and written back at their place in field-number order.
 */
import { InputError } from '../util/errors.ts';
import type { FieldSpec, MessageSpec, ScalarType } from './schema.ts';

/** A field the schema does not model, kept as its raw bytes (tag included). */
export interface UnknownField {
  id: number;
  wireType: number;
  bytes: Buffer;
}

/** Where unknown fields of a decoded message are kept (absent when there are none). */
export const UNKNOWN_FIELDS: unique symbol = Symbol('criu.unknownFields');

export type Scalar = number | bigint | boolean | string | Buffer;
export type Value = Scalar | Message | Value[];
export interface Message {
  [field: string]: Value | undefined;
  [UNKNOWN_FIELDS]?: UnknownField[];
}

/** Where a decode error is reported: the file (or a label) and the absolute offset of the bytes being decoded. */
export interface DecodeContext {
  file: string;
  /** Absolute offset of buf[0] in the file. */
  base: number;
  /** Human description of the entry being decoded ("entry 3 (core_entry)"). */
  what: string;
}

const WIRE_VARINT = 0;
const WIRE_64 = 1;
const WIRE_LEN = 2;
const WIRE_32 = 5;

function wireTypeOf(type: FieldSpec['type']): number {
  switch (type) {
    case 'double':
    case 'fixed64':
    case 'sfixed64':
      return WIRE_64;
    case 'float':
    case 'fixed32':
    case 'sfixed32':
      return WIRE_32;
    case 'string':
    case 'bytes':
    case 'message':
      return WIRE_LEN;
    default:
      return WIRE_VARINT;
  }
}

class Reader {
  pos: number;
  constructor(
    readonly buf: Buffer,
    start: number,
    readonly end: number,
    readonly ctx: DecodeContext,
  ) {
    this.pos = start;
  }

  fail(at: number, message: string): never {
    throw new InputError(`${this.ctx.file}: ${this.ctx.what} at offset ${this.ctx.base + at}: ${message}`);
  }

  /** A varint as two unsigned 32-bit halves. */
  varint(what: string): [number, number] {
    const start = this.pos;
    let lo = 0;
    let hi = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) this.fail(start, `${what}: varint runs past the end of the message`);
      const b = this.buf[this.pos++];
      if (i < 4) lo |= (b & 0x7f) << (7 * i);
      else if (i === 4) {
        lo |= (b & 0x0f) << 28;
        hi |= (b & 0x7f) >> 4;
      } else hi |= (b & 0x7f) << (7 * i - 32);
      if ((b & 0x80) === 0) return [lo >>> 0, hi >>> 0];
    }
    this.fail(start, `${what}: varint longer than 10 bytes`);
  }

  fixed(bytes: 4 | 8, what: string): number {
    if (this.pos + bytes > this.end)
      this.fail(this.pos, `${what}: needs ${bytes} bytes, ${this.end - this.pos} left in the message`);
    const at = this.pos;
    this.pos += bytes;
    return at;
  }

  /** Start and end of a length-delimited value. */
  len(what: string): [number, number] {
    const at = this.pos;
    const [lo, hi] = this.varint(what);
    if (hi !== 0 || lo > this.end - this.pos)
      this.fail(
        at,
        `${what}: length ${hi ? 'over 4 GiB' : lo} exceeds the ${this.end - this.pos} bytes left`,
      );
    const start = this.pos;
    this.pos += lo;
    return [start, this.pos];
  }

  skip(wireType: number, what: string): void {
    switch (wireType) {
      case WIRE_VARINT:
        this.varint(what);
        return;
      case WIRE_64:
        this.fixed(8, what);
        return;
      case WIRE_32:
        this.fixed(4, what);
        return;
      case WIRE_LEN:
        this.len(what);
        return;
      default:
        this.fail(
          this.pos,
          `${what}: wire type ${wireType} is not used by CRIU images (expected 0, 1, 2 or 5)`,
        );
    }
  }
}

function toBig(lo: number, hi: number): bigint {
  return (BigInt(hi) << 32n) | BigInt(lo);
}

function scalarFromVarint(type: ScalarType | 'enum', lo: number, hi: number): Scalar {
  switch (type) {
    case 'uint32':
      return lo;
    case 'int32':
    case 'enum':
      return lo | 0;
    case 'sint32':
      return (lo >>> 1) ^ -(lo & 1);
    case 'uint64':
      return toBig(lo, hi);
    case 'int64':
      return BigInt.asIntN(64, toBig(lo, hi));
    case 'sint64': {
      const v = toBig(lo, hi);
      return (v >> 1n) ^ -(v & 1n);
    }
    case 'bool':
      return (lo | hi) !== 0;
    default:
      throw new Error(`not a varint type: ${type}`);
  }
}

function readScalar(r: Reader, field: FieldSpec, what: string): Scalar {
  const type = field.type;
  switch (type) {
    case 'double':
      return r.buf.readDoubleLE(r.fixed(8, what));
    case 'float':
      return r.buf.readFloatLE(r.fixed(4, what));
    case 'fixed32':
      return r.buf.readUInt32LE(r.fixed(4, what));
    case 'sfixed32':
      return r.buf.readInt32LE(r.fixed(4, what));
    case 'fixed64':
      return r.buf.readBigUInt64LE(r.fixed(8, what));
    case 'sfixed64':
      return r.buf.readBigInt64LE(r.fixed(8, what));
    case 'string': {
      const [s, e] = r.len(what);
      return r.buf.toString('utf8', s, e);
    }
    case 'bytes': {
      const [s, e] = r.len(what);
      return Buffer.from(r.buf.subarray(s, e));
    }
    case 'message':
      throw new Error('readScalar on a message field');
    default: {
      const [lo, hi] = r.varint(what);
      return scalarFromVarint(type, lo, hi);
    }
  }
}

function decodeFrom(r: Reader, spec: MessageSpec, end: number): Message {
  const out: Message = {};
  while (r.pos < end) {
    const tagAt = r.pos;
    const [tagLo, tagHi] = r.varint(`${spec.name}: field tag`);
    const id = tagLo >>> 3;
    const wireType = tagLo & 7;
    if (tagHi !== 0 || id === 0)
      r.fail(tagAt, `${spec.name}: invalid field tag (field number 0 or too large)`);
    const field = spec.byId.get(id);
    if (!field) {
      r.skip(wireType, `${spec.name}: unknown field ${id}`);
      (out[UNKNOWN_FIELDS] ??= []).push({ id, wireType, bytes: Buffer.from(r.buf.subarray(tagAt, r.pos)) });
      continue;
    }
    const what = `${spec.name}.${field.name}`;
    const expected = wireTypeOf(field.type);
    let value: Value;
    if (field.repeated && wireType === WIRE_LEN && expected !== WIRE_LEN) {
      // Packed repeated scalars (accepted even where CRIU would write them unpacked).
      const [s, e] = r.len(what);
      const list = (out[field.name] as Value[] | undefined) ?? [];
      const sub = new Reader(r.buf, s, e, r.ctx);
      while (sub.pos < e) list.push(readScalar(sub, field, what));
      out[field.name] = list;
      continue;
    }
    if (wireType !== expected)
      r.fail(tagAt, `${what}: wire type ${wireType}, expected ${expected} for a ${field.type} field`);
    if (field.type === 'message' && field.message) {
      const [s, e] = r.len(what);
      const sub = new Reader(r.buf, s, e, r.ctx);
      value = decodeFrom(sub, field.message, e);
    } else {
      value = readScalar(r, field, what);
    }
    if (field.repeated) {
      const list = (out[field.name] as Value[] | undefined) ?? [];
      list.push(value);
      out[field.name] = list;
    } else {
      // A repeated occurrence of a singular field: the last one wins (messages would be merged by protobuf; CRIU
      // never writes a singular field twice).
      out[field.name] = value;
    }
  }
  for (const field of spec.fields)
    if (field.required && out[field.name] === undefined)
      r.fail(end, `${spec.name}: required field ${field.name} (${field.id}) is missing`);
  return out;
}

/**
 * Decodes one message occupying buf[start, end). Errors are InputErrors naming ctx.file and the absolute offset
 * (ctx.base + position in buf).
 */
export function decodeMessage(
  buf: Buffer,
  spec: MessageSpec,
  ctx: DecodeContext,
  start = 0,
  end = buf.length,
): Message {
  const r = new Reader(buf, start, end, ctx);
  return decodeFrom(r, spec, end);
}

// ---------------------------------------------------------------------------------------------------------------
// Encoding

class Writer {
  buf = Buffer.allocUnsafe(256);
  len = 0;

  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  varint(lo: number, hi: number): void {
    this.ensure(10);
    lo >>>= 0;
    hi >>>= 0;
    while (hi !== 0 || lo > 0x7f) {
      this.buf[this.len++] = (lo & 0x7f) | 0x80;
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
    }
    this.buf[this.len++] = lo;
  }

  uint(n: number): void {
    this.varint(n >>> 0, 0);
  }

  big(v: bigint): void {
    const u = BigInt.asUintN(64, v);
    this.varint(Number(u & 0xffffffffn), Number(u >> 32n));
  }

  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  tag(id: number, wireType: number): void {
    this.uint((id << 3) | wireType);
  }

  result(): Buffer {
    return this.buf.subarray(0, this.len);
  }
}

function encodeError(spec: MessageSpec, field: FieldSpec, message: string): TypeError {
  return new TypeError(`cannot encode ${spec.name}.${field.name}: ${message}`);
}

function asInteger(spec: MessageSpec, field: FieldSpec, v: Value, bits: 32 | 64, signed: boolean): bigint {
  let b: bigint;
  if (typeof v === 'bigint') b = v;
  else if (typeof v === 'number' && Number.isInteger(v)) b = BigInt(v);
  else if (typeof v === 'boolean') b = v ? 1n : 0n;
  else throw encodeError(spec, field, `expected an integer, got ${typeof v}`);
  const min = signed ? -(1n << BigInt(bits - 1)) : 0n;
  const max = signed ? (1n << BigInt(bits - 1)) - 1n : (1n << BigInt(bits)) - 1n;
  if (b < min || b > max) throw encodeError(spec, field, `${b} is out of range for ${field.type}`);
  return b;
}

function writeScalar(w: Writer, spec: MessageSpec, field: FieldSpec, v: Value): void {
  switch (field.type) {
    case 'uint32':
      w.uint(Number(asInteger(spec, field, v, 32, false)));
      return;
    case 'int32':
    case 'enum':
      // Negative values are sign-extended to 64 bits: a 10-byte varint, as protobuf-c writes them.
      w.big(asInteger(spec, field, v, 32, true));
      return;
    case 'sint32': {
      const n = Number(asInteger(spec, field, v, 32, true));
      w.uint(((n << 1) ^ (n >> 31)) >>> 0);
      return;
    }
    case 'uint64':
      w.big(asInteger(spec, field, v, 64, false));
      return;
    case 'int64':
      w.big(asInteger(spec, field, v, 64, true));
      return;
    case 'sint64': {
      const n = asInteger(spec, field, v, 64, true);
      w.big((n << 1n) ^ (n >> 63n));
      return;
    }
    case 'bool':
      if (typeof v !== 'boolean') throw encodeError(spec, field, `expected a boolean, got ${typeof v}`);
      w.uint(v ? 1 : 0);
      return;
    case 'fixed32':
    case 'sfixed32': {
      const n = Number(asInteger(spec, field, v, 32, field.type === 'sfixed32'));
      const b = Buffer.allocUnsafe(4);
      if (field.type === 'fixed32') b.writeUInt32LE(n);
      else b.writeInt32LE(n);
      w.bytes(b);
      return;
    }
    case 'fixed64':
    case 'sfixed64': {
      const n = asInteger(spec, field, v, 64, field.type === 'sfixed64');
      const b = Buffer.allocUnsafe(8);
      if (field.type === 'fixed64') b.writeBigUInt64LE(n);
      else b.writeBigInt64LE(n);
      w.bytes(b);
      return;
    }
    case 'double':
    case 'float': {
      if (typeof v !== 'number') throw encodeError(spec, field, `expected a number, got ${typeof v}`);
      const b = Buffer.allocUnsafe(field.type === 'double' ? 8 : 4);
      if (field.type === 'double') b.writeDoubleLE(v);
      else b.writeFloatLE(v);
      w.bytes(b);
      return;
    }
    case 'string': {
      if (typeof v !== 'string') throw encodeError(spec, field, `expected a string, got ${typeof v}`);
      const b = Buffer.from(v, 'utf8');
      w.uint(b.length);
      w.bytes(b);
      return;
    }
    case 'bytes': {
      if (!(v instanceof Uint8Array)) throw encodeError(spec, field, 'expected a Buffer');
      w.uint(v.length);
      w.bytes(v);
      return;
    }
    case 'message':
      throw new Error('writeScalar on a message field');
  }
}

/** True for a decoded message object (not a scalar, Buffer or array). */
export function isMessageValue(v: Value | undefined): v is Message {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function writeField(w: Writer, spec: MessageSpec, field: FieldSpec, v: Value): void {
  if (field.type === 'message') {
    if (!isMessageValue(v) || !field.message) throw encodeError(spec, field, 'expected a message object');
    const body = encodeMessage(v, field.message);
    w.tag(field.id, WIRE_LEN);
    w.uint(body.length);
    w.bytes(body);
    return;
  }
  w.tag(field.id, wireTypeOf(field.type));
  writeScalar(w, spec, field, v);
}

/** Encodes a message: known fields in field-number order, unknown fields (kept from decoding) at their place. */
export function encodeMessage(msg: Message, spec: MessageSpec): Buffer {
  const w = new Writer();
  const unknown = msg[UNKNOWN_FIELDS] ?? [];
  let u = 0;
  for (const field of spec.fields) {
    while (u < unknown.length && unknown[u].id < field.id) w.bytes(unknown[u++].bytes);
    const v = msg[field.name];
    if (v === undefined || v === null) {
      if (field.required) throw encodeError(spec, field, 'the field is required');
      continue;
    }
    if (field.repeated) {
      if (!Array.isArray(v)) throw encodeError(spec, field, 'expected an array for a repeated field');
      if (field.packed && v.length > 0) {
        const inner = new Writer();
        for (const item of v) writeScalar(inner, spec, field, item);
        const body = inner.result();
        w.tag(field.id, WIRE_LEN);
        w.uint(body.length);
        w.bytes(body);
      } else {
        for (const item of v) writeField(w, spec, field, item);
      }
      continue;
    }
    writeField(w, spec, field, v);
  }
  while (u < unknown.length) w.bytes(unknown[u++].bytes);
  for (const name of Object.keys(msg))
    if (!spec.byName.has(name)) throw new TypeError(`cannot encode ${spec.name}: it has no field "${name}"`);
  return Buffer.from(w.result());
}

/** True when a decoded message (or any message nested in it) holds fields the schema does not model. */
export function hasUnknownFields(msg: Message): boolean {
  if (msg[UNKNOWN_FIELDS]?.length) return true;
  for (const v of Object.values(msg)) {
    if (isMessageValue(v) && hasUnknownFields(v)) return true;
    if (Array.isArray(v))
      for (const item of v) if (isMessageValue(item) && hasUnknownFields(item)) return true;
  }
  return false;
}
