import { xxh64 } from '@node-rs/xxhash';
import { ProtocolError } from '../util/errors.ts';

/**
 * precog's wire frames. One layout for every message so that the emulator carries exactly the bytes a real
 * link would:
 *
 *   offset size field
 *   0      4    magic "PRCG"
 *   4      1    protocol version
 *   5      1    message type (FrameType)
 *   6      2    reserved, zero
 *   8      4    payload length (little endian)
 *   12     8    xxh64 of the payload (little endian)
 *   20     n    payload
 */
export const FRAME_MAGIC = 0x47435250; // "PRCG" read as little-endian u32
export const PROTOCOL_VERSION = 1;
export const FRAME_HEADER_BYTES = 20;
export const MAX_FRAME_PAYLOAD = 16 * 1024 * 1024;

export enum FrameType {
  Hello = 1,
  HelloAck = 2,
  Layout = 3,
  Pages = 4,
  RoundEnd = 5,
  State = 6,
  Commit = 7,
  Resumed = 8,
  Switchover = 9,
  Fault = 10,
  PostcopyDone = 11,
  DoneAck = 12,
  Abort = 13,
  Error = 14,
  /** A client's request to an agent (precog migrate, job list/cancel): JSON, see src/agent/control.ts. */
  Control = 15,
  /** An agent's answer to a Control request: progress, the report, an error. JSON. */
  Event = 16,
  /**
   * The destination's receipt of one PAGES frame during a post-copy (empty payload), sent by destinations that said
   * `acks: true` in HELLO_ACK: the source paces its background push by them (src/engine/pushwindow.ts).
   */
  PagesAck = 17,
}

export interface Frame {
  type: FrameType;
  payload: Buffer;
}

export function encodeFrame(type: FrameType, payload: Uint8Array): Buffer {
  if (payload.length > MAX_FRAME_PAYLOAD) {
    throw new ProtocolError(
      `frame payload of ${payload.length} bytes exceeds the limit of ${MAX_FRAME_PAYLOAD}`,
    );
  }
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  writeHeader(out, type, payload);
  out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

/** Writes the header in place for a frame whose payload already sits at out[20..]. */
export function sealFrame(out: Buffer, type: FrameType): Buffer {
  writeHeader(out, type, out.subarray(FRAME_HEADER_BYTES));
  return out;
}

function writeHeader(out: Buffer, type: FrameType, payload: Uint8Array): void {
  out.writeUInt32LE(FRAME_MAGIC, 0);
  out.writeUInt8(PROTOCOL_VERSION, 4);
  out.writeUInt8(type, 5);
  out.writeUInt16LE(0, 6);
  out.writeUInt32LE(payload.length, 8);
  out.writeBigUInt64LE(xxh64(payload), 12);
}

/** Decodes one whole frame, checking magic, version, length and checksum. */
export function decodeFrame(buf: Buffer): Frame {
  if (buf.length < FRAME_HEADER_BYTES) {
    throw new ProtocolError(`truncated frame: ${buf.length} bytes, a header alone is ${FRAME_HEADER_BYTES}`);
  }
  const length = checkHeader(buf);
  const type = buf.readUInt8(5);
  if (buf.length !== FRAME_HEADER_BYTES + length) {
    throw new ProtocolError(
      `truncated frame: header announces ${length} payload bytes, ${buf.length - FRAME_HEADER_BYTES} present`,
    );
  }
  const payload = buf.subarray(FRAME_HEADER_BYTES);
  if (xxh64(payload) !== buf.readBigUInt64LE(12)) {
    throw new ProtocolError(`bad checksum on a ${FrameType[type]} frame: the data was corrupted in transit`);
  }
  return { type, payload };
}

export function jsonFrame(type: FrameType, value: unknown): Buffer {
  return encodeFrame(type, Buffer.from(JSON.stringify(value)));
}

export function parseJson<T>(frame: Frame): T {
  try {
    return JSON.parse(frame.payload.toString('utf8')) as T;
  } catch {
    throw new ProtocolError(`malformed ${FrameType[frame.type]} frame: payload is not valid JSON`);
  }
}

export function expectType(frame: Frame, type: FrameType): void {
  if (frame.type !== type) {
    throw new ProtocolError(
      `out-of-order message: expected ${FrameType[type]}, got ${FrameType[frame.type]}`,
    );
  }
}

/** Checks a frame header; returns the payload length. */
export function checkHeader(head: Buffer): number {
  const magic = head.readUInt32LE(0);
  if (magic !== FRAME_MAGIC) {
    throw new ProtocolError(
      `bad frame magic 0x${magic.toString(16)}: the peer is not speaking precog's protocol`,
    );
  }
  const version = head.readUInt8(4);
  if (version !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      `unsupported protocol version ${version}; this precog speaks version ${PROTOCOL_VERSION}: run the same precog release on both hosts`,
    );
  }
  const type = head.readUInt8(5);
  if (!(type in FrameType)) throw new ProtocolError(`unknown frame type ${type}`);
  const reserved = head.readUInt16LE(6);
  if (reserved !== 0)
    throw new ProtocolError(
      `frame header bytes 6-7 are reserved and must be zero, not 0x${reserved.toString(16)}`,
    );
  const length = head.readUInt32LE(8);
  if (length > MAX_FRAME_PAYLOAD) {
    throw new ProtocolError(
      `oversized frame: payload of ${length} bytes exceeds the limit of ${MAX_FRAME_PAYLOAD}`,
    );
  }
  return length;
}
