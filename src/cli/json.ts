import { Option } from 'commander';

/**
 * `--json [file]`, one meaning for every command: the JSON on stdout instead of the usual text without FILE (or
 * with -); with FILE, the usual text on stdout and the JSON written to FILE (checked before any work starts).
 */
export const jsonOption = (what: string): Option =>
  new Option(
    '--json [file]',
    `${what} as JSON: on stdout, or into FILE (then the usual text stays on stdout)`,
  );
