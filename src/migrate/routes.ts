import { UsageError } from '../util/errors.ts';

/** The routes a switchover's dump can take (LiveMigrationOptions.dumpVia); its own module so the CLI loads little. */
export type DumpVia = 'auto' | 'lazy' | 'images' | 'page-server';
export const DUMP_ROUTES: readonly DumpVia[] = ['auto', 'lazy', 'images', 'page-server'];

/**
 * Post-copy and hybrid restore from a full local dump (its pagemaps say which pages restore eagerly): a UsageError
 * for any other route asked of them. The CLI checks it before it asks an agent; the agent again (dumpRoute).
 */
export function refusePostcopyRoute(via: string | undefined, postcopy: boolean, strategyName: string): void {
  if (postcopy && via !== undefined && via !== 'auto' && via !== 'images')
    throw new UsageError(
      `--dump-via ${via}: ${strategyName} needs the local dump (its pagemaps say which pages restore eagerly); leave --dump-via out`,
    );
}
