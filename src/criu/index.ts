/** CRIU images: reading, writing and crit-style printing (see docs/criu-images.md). */
export {
  decodeMessage,
  encodeMessage,
  hasUnknownFields,
  UNKNOWN_FIELDS,
  type Message,
  type UnknownField,
  type Value,
} from './codec.ts';
export { critEntry, critImage, critJson, type CritValue } from './crit.ts';
export {
  encodeImage,
  ENTRY_TYPES,
  entryTypeName,
  isModelled,
  modelledTypes,
  readImage,
  writeImage,
  type CriuImage,
} from './images.ts';
export {
  IMG_COMMON_MAGIC,
  IMG_SERVICE_MAGIC,
  imageTypeOfMagic,
  isRawImageName,
  MAGIC,
  type ImageType,
} from './magic.ts';
export {
  encodePagemap,
  isPrivateAnonymous,
  PAGE_SIZE,
  pageRuns,
  pagemapEntryPages,
  pagemapFlags,
  PE_LAZY,
  PE_PARENT,
  PE_PRESENT,
  readPagemap,
  readPages,
  readVmas,
  writePagemap,
  type PageRun,
  type PagemapEntry,
  type PagemapEntryMessage,
  type PagemapFormat,
  type PagemapWriteOptions,
  type PagemapRun,
  type VmaEntry,
} from './pages.ts';
export { criuSchema, PROTO_DIR } from './schema.ts';
