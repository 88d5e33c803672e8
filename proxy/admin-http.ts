/**
 * The small HTTP pieces every admin endpoint uses: a plain-text answer, a JSON
 * answer (pretty-printed: operators read it with curl), one rendered once per
 * value (jsonOnce), and the percent-decoded name of a path segment
 * (`/certs/:name`, `/routes/:name`).
 */
import type http from 'node:http';

export function text(res: http.ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' }).end(body);
}

export function json(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(`${JSON.stringify(body, null, 2)}\n`);
}

/** The bodies jsonOnce rendered, by the value they stand for: kept while it is (a config, a listing of certificates). */
const rendered = new WeakMap<object, Buffer>();

/**
 * json() of `render()` for `value`, an object that stays the same until what it shows changes (GET /config, GET /certs):
 * rendered once, every answer sending the one Buffer. Rendered per request, 64 connections × 16 pipelined `GET /certs`
 * of a large store, never read, held 1,024 strings of megabytes each until the primary's heap ran out (a V8 abort).
 */
export function jsonOnce(res: http.ServerResponse, value: object, render: () => unknown): void {
  let body = rendered.get(value);
  if (body === undefined) {
    body = Buffer.from(`${JSON.stringify(render(), null, 2)}\n`);
    rendered.set(value, body);
  }
  res.writeHead(200, { 'content-type': 'application/json' }).end(body);
}

/** The entry name of a `/certs/:name` path (or `/routes/:name`, `/acme/renew/:name`), percent-decoded; undefined when it does not decode. */
export function entryName(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}
