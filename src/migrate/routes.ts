/** The routes a switchover's dump can take (LiveMigrationOptions.dumpVia); its own module so the CLI loads little. */
export type DumpVia = 'auto' | 'lazy' | 'images' | 'page-server';
export const DUMP_ROUTES: readonly DumpVia[] = ['auto', 'lazy', 'images', 'page-server'];
