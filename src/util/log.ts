import pino, { type Logger } from 'pino';

export type { Logger } from 'pino';

/**
 * Structured logs (JSON lines on stderr); child loggers carry the migration id on every line. Each line names its
 * level ("info", "warn", ...) and its time in ISO 8601 (UTC), so that it reads without a decoder and sorts as text.
 * PRECOG_LOG_LEVEL=debug|info|warn|error|silent.
 */
export function createLogger(name: string, level = process.env.PRECOG_LOG_LEVEL ?? 'info'): Logger {
  return pino(
    {
      name,
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    pino.destination(2),
  );
}
