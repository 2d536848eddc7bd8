import { UsageError } from './errors.ts';

/**
 * Parses "name:preset:key=value:key=value" specs used for workloads and strategies. Colons separate parameters so
 * that lists of specs can be separated by commas.
 */
export interface Spec {
  name: string;
  /** Bare words after the name (presets such as "high"). */
  words: string[];
  params: Map<string, string>;
}

export function parseSpec(text: string, what: string): Spec {
  const parts = text.trim().split(':');
  const name = parts[0].trim().toLowerCase();
  if (!name) throw new UsageError(`empty ${what} in "${text}"`);
  const words: string[] = [];
  const params = new Map<string, string>();
  for (const p of parts.slice(1)) {
    const eq = p.indexOf('=');
    if (eq < 0) words.push(p.trim().toLowerCase());
    else params.set(p.slice(0, eq).trim().toLowerCase(), p.slice(eq + 1).trim());
  }
  return { name, words, params };
}

/** Takes a parameter out of the spec, parsed; complains about anything left over with checkEmpty. */
export function take<T>(spec: Spec, key: string, parse: (v: string, what: string) => T, fallback: T): T {
  const v = spec.params.get(key);
  if (v === undefined) return fallback;
  spec.params.delete(key);
  return parse(v, `${spec.name} parameter ${key}`);
}

export function checkEmpty(spec: Spec, what: string, accepted: string[]): void {
  const left = [...spec.params.keys()];
  if (left.length > 0) {
    throw new UsageError(
      `unknown ${what} parameter "${left[0]}" for ${spec.name}; accepted: ${accepted.join(', ') || 'none'}`,
    );
  }
}

export function splitList(text: string): string[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/** A registry entry's parameters as help shows them: "[:a=..:b=..]", or nothing for none. */
export const paramSyntax = (params: readonly string[]): string =>
  params.length ? `[${params.map((p) => `:${p}=..`).join('')}]` : '';
