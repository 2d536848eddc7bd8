/** Checks on paths a user names, made before any work starts. */
import { accessSync, constants, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { UsageError } from './errors.ts';

/**
 * Checks before any work that FILE can be written (its directory exists and takes files; a file there is not a
 * directory): a UsageError naming the option and the fix otherwise.
 */
export function checkWritable(file: string, option: string): void {
  const dir = dirname(resolve(file));
  let st;
  try {
    st = statSync(dir);
  } catch {
    throw new UsageError(
      `${option} ${file}: the directory ${dir} does not exist (create it, or pick another path)`,
    );
  }
  if (!st.isDirectory()) throw new UsageError(`${option} ${file}: ${dir} is not a directory`);
  try {
    accessSync(dir, constants.W_OK);
  } catch {
    throw new UsageError(`${option} ${file}: the directory ${dir} is not writable`);
  }
  try {
    if (statSync(file).isDirectory())
      throw new UsageError(`${option} ${file}: that is a directory; name a file`);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    // no such file yet: it will be created
  }
}
