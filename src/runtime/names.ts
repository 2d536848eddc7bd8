/**
 * The runtimes precog ships, by name: a module of its own so that help texts list them without loading the runtimes.
 * src/runtime/index.ts registers one runtime for each name, no more (its table is typed by RuntimeName).
 */
export const RUNTIME_NAMES = ['precog', 'podman', 'runc', 'crun'] as const;
export type RuntimeName = (typeof RUNTIME_NAMES)[number];
