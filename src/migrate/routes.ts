import { UsageError } from '../util/errors.ts';

/** The routes a switchover's dump can take (LiveMigrationOptions.dumpVia); its own module so the CLI loads little. */
export type DumpVia = 'auto' | 'lazy' | 'images' | 'page-server';
export const DUMP_ROUTES: readonly DumpVia[] = ['auto', 'lazy', 'images', 'page-server'];

/**
 * Post-copy and hybrid need the dump's pagemaps (which pages restore eagerly) and, for the pages that follow the
 * switchover, the source's frozen memory or a local dump: the lazy and images routes, not the page server. A
 * UsageError for it. The CLI checks it before it asks an agent; the agent again (dumpRoute).
 */
export function refusePostcopyRoute(via: string | undefined, postcopy: boolean, strategyName: string): void {
  if (postcopy && via === 'page-server')
    throw new UsageError(
      `--dump-via page-server: ${strategyName} serves its pages after the switchover from the frozen source or a ` +
        'local dump; use --dump-via lazy or images, or leave --dump-via out',
    );
}
