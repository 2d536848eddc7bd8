/** Plain-text and markdown tables. */
export type Align = 'left' | 'right';

export interface Column<T> {
  title: string;
  align?: Align;
  value: (row: T) => string;
}

export function renderTable<T>(
  rows: readonly T[],
  columns: readonly Column<T>[],
  format: 'text' | 'markdown',
): string {
  const cells = rows.map((r) => columns.map((c) => c.value(r)));
  if (format === 'markdown') {
    const head = `| ${columns.map((c) => c.title).join(' | ')} |`;
    const rule = `|${columns.map((c) => (c.align === 'right' ? '---:' : ':---')).join('|')}|`;
    return [head, rule, ...cells.map((r) => `| ${r.join(' | ')} |`)].join('\n') + '\n';
  }
  const widths = columns.map((c, i) => Math.max(c.title.length, ...cells.map((r) => r[i].length)));
  const line = (r: string[]): string =>
    r
      .map((v, i) => (columns[i].align === 'right' ? v.padStart(widths[i]) : v.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return (
    [line(columns.map((c) => c.title)), line(widths.map((w) => '-'.repeat(w))), ...cells.map(line)].join(
      '\n',
    ) + '\n'
  );
}
