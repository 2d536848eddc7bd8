/**
 * A command's action whose module is imported only when the command runs. The command definitions (src/cli/*.ts)
 * load commander and nothing heavy, so that `precog --help`, `precog COMMAND --help` and usage errors never load
 * the engine, CRIU, the codecs or the runtimes that the actions (src/cli/actions/) need.
 */
export function lazy<A extends unknown[]>(
  load: () => Promise<(...args: A) => unknown>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    const action = await load();
    await action(...args);
  };
}
