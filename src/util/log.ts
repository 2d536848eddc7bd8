import pino, { type Logger } from 'pino';

export type { Logger } from 'pino';

/**
 * Structured logs (JSON lines on stderr); child loggers carry the migration id on every line.
 * PRECOG_LOG_LEVEL=debug|info|warn|error|silent.
 */
export function createLogger(name: string, level = process.env.PRECOG_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination(2));
}
