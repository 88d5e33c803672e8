/**
 * The small HTTP pieces every admin endpoint uses: a plain-text answer, a JSON
 * answer (pretty-printed: operators read it with curl), and the
 * percent-decoded name of a path segment (`/certs/:name`, `/routes/:name`).
 */
import type http from 'node:http';

export function text(res: http.ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' }).end(body);
}

export function json(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(`${JSON.stringify(body, null, 2)}\n`);
}

/** The entry name of a `/certs/:name` path (or `/routes/:name`, `/acme/renew/:name`), percent-decoded; undefined when it does not decode. */
export function entryName(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}
