/**
 * The message schema of CRIU images, loaded at run time from the .proto files in src/criu/proto with protobufjs
 * (no generated code). protobufjs parses the files and resolves the types; this module turns its reflection objects
 * into flat field tables that codec.ts walks to decode and encode the wire format.
 *
 * Field names are kept exactly as in the .proto files (snake_case), which are the names `crit decode` prints.
 * `(criu).hex`, `(criu).flags` and `(criu).dict` options on fields are CRIU's presentation hints; they do not change
 * the wire format and are read only by crit.ts (crit's "pretty" output).
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

/** Directory of precog's .proto definitions of CRIU images. */
export const PROTO_DIR = fileURLToPath(new URL('./proto', import.meta.url));

export type ScalarType =
  | 'double'
  | 'float'
  | 'int32'
  | 'uint32'
  | 'sint32'
  | 'fixed32'
  | 'sfixed32'
  | 'int64'
  | 'uint64'
  | 'sint64'
  | 'fixed64'
  | 'sfixed64'
  | 'bool'
  | 'string'
  | 'bytes';

/** CRIU's presentation options of a field (images/opts.proto in CRIU): how crit prints it with --pretty. */
export interface CriuFieldOptions {
  hex?: boolean;
  flags?: string;
  dict?: string;
  dev?: boolean;
  odev?: boolean;
  ipadd?: boolean;
  conv?: string;
}

export interface EnumSpec {
  name: string;
  /** Value -> name (the first name declared for a value). */
  names: Map<number, string>;
  /** Name -> value. */
  values: Map<string, number>;
}

export interface FieldSpec {
  name: string;
  id: number;
  /** A scalar type, or 'enum' / 'message' (then `enumSpec` / `message` is set). */
  type: ScalarType | 'enum' | 'message';
  repeated: boolean;
  required: boolean;
  /** Repeated scalars written packed (only with [packed = true]; proto2 default is unpacked). */
  packed: boolean;
  message?: MessageSpec;
  enumSpec?: EnumSpec;
  criu: CriuFieldOptions;
}

export interface MessageSpec {
  name: string;
  /** Fields sorted by number: the order in which CRIU (protobuf-c) writes them. */
  fields: FieldSpec[];
  byId: Map<number, FieldSpec>;
  byName: Map<string, FieldSpec>;
}

const SCALARS = new Set<string>([
  'double',
  'float',
  'int32',
  'uint32',
  'sint32',
  'fixed32',
  'sfixed32',
  'int64',
  'uint64',
  'sint64',
  'fixed64',
  'sfixed64',
  'bool',
  'string',
  'bytes',
]);

const CRIU_OPTION_KEYS: (keyof CriuFieldOptions)[] = ['hex', 'flags', 'dict', 'dev', 'odev', 'ipadd', 'conv'];

function criuOptions(options: Record<string, unknown> | undefined): CriuFieldOptions {
  const out: CriuFieldOptions = {};
  if (!options) return out;
  for (const key of CRIU_OPTION_KEYS) {
    const v = options[`(criu).${key}`];
    if (v === undefined) continue;
    if (key === 'flags' || key === 'dict' || key === 'conv') out[key] = String(v);
    else out[key] = v === true;
  }
  return out;
}

export class Schema {
  private readonly messages = new Map<string, MessageSpec>();
  private readonly enums = new Map<string, EnumSpec>();

  constructor(readonly root: protobuf.Root) {}

  /** The flat field table of a message type ("core_entry", or a nested one: "core_entry.march" is an enum). */
  message(name: string): MessageSpec {
    const known = this.messages.get(name);
    if (known) return known;
    const type = this.root.lookupType(name);
    return this.fromType(type);
  }

  has(name: string): boolean {
    return this.root.lookup(name) instanceof protobuf.Type;
  }

  private fromType(type: protobuf.Type): MessageSpec {
    const key = type.fullName.replace(/^\./, '');
    const known = this.messages.get(key);
    if (known) return known;
    const spec: MessageSpec = { name: key, fields: [], byId: new Map(), byName: new Map() };
    // Register before resolving fields: message types may refer to themselves (cgroup_dir_entry.children).
    this.messages.set(key, spec);
    for (const f of [...type.fieldsArray].sort((x, y) => x.id - y.id)) {
      f.resolve();
      const field: FieldSpec = {
        name: f.name,
        id: f.id,
        type: 'message',
        repeated: f.repeated,
        required: f.required,
        packed: f.repeated && f.options?.packed === true,
        criu: criuOptions(f.options),
      };
      if (SCALARS.has(f.type)) {
        field.type = f.type as ScalarType;
      } else if (f.resolvedType instanceof protobuf.Enum) {
        field.type = 'enum';
        field.enumSpec = this.fromEnum(f.resolvedType);
      } else if (f.resolvedType instanceof protobuf.Type) {
        field.type = 'message';
        field.message = this.fromType(f.resolvedType);
      } else {
        throw new Error(`criu schema: ${key}.${f.name} has an unresolved type ${f.type}`);
      }
      if (field.packed && (field.type === 'string' || field.type === 'bytes' || field.type === 'message'))
        throw new Error(`criu schema: ${key}.${f.name}: only scalar fields can be packed`);
      spec.fields.push(field);
      spec.byId.set(field.id, field);
      spec.byName.set(field.name, field);
    }
    return spec;
  }

  private fromEnum(e: protobuf.Enum): EnumSpec {
    const key = e.fullName.replace(/^\./, '');
    const known = this.enums.get(key);
    if (known) return known;
    const spec: EnumSpec = { name: key, names: new Map(), values: new Map() };
    for (const [name, value] of Object.entries(e.values)) {
      if (!spec.names.has(value)) spec.names.set(value, name);
      spec.values.set(name, value);
    }
    this.enums.set(key, spec);
    return spec;
  }
}

let loaded: Schema | undefined;

/** Loads (once) every .proto file of src/criu/proto into one protobufjs root. */
export function criuSchema(): Schema {
  if (loaded) return loaded;
  const files = readdirSync(PROTO_DIR)
    .filter((f) => f.endsWith('.proto'))
    .sort()
    .map((f) => join(PROTO_DIR, f));
  const root = new protobuf.Root();
  root.loadSync(files, { keepCase: true });
  root.resolveAll();
  loaded = new Schema(root);
  return loaded;
}
