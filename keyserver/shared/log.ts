/**
 * The one logger factory of the product (pino): JSON lines on stdout, level
 * from config. Redaction is a second line of defence only: code never passes a
 * PIN, key bytes or a ticket key to a log call in the first place.
 */
import pino, { type Logger } from 'pino';

export type { Logger };

const REDACT = ['pin', '*.pin', 'soPin', '*.soPin', 'key', '*.key', 'privateKey', '*.privateKey'];

export function createLogger(name: string, level = 'info', destination: pino.DestinationStream = pino.destination({ sync: false })): Logger {
  return pino(
    {
      name,
      level,
      redact: { paths: REDACT, censor: '[redacted]' },
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination,
  );
}
