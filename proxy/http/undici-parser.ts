/**
 * The HTTP/1.1 parser undici 7 attaches to each origin connection, for the
 * modules that adjust it per connection (origin-interim.ts, origin-eof.ts,
 * origin-trailers.ts, origin-version.ts):
 * undici keeps it on the socket under a symbol described 'parser', once its
 * connector's callback has run. Reached on the one instance, never undici's
 * class, so nothing else in the process that uses undici changes. If a later
 * undici keeps it elsewhere, this finds nothing and each module changes
 * nothing (the tests that cover them say so).
 */
import type { Socket } from 'node:net';

/** What of undici's parser the modules above use or replace. */
export interface UndiciParser {
  onHeadersComplete: (statusCode: number, upgrade: boolean, shouldKeepAlive: boolean) => number;
  /** A field name, or a piece of one, in a head or a trailer section (undici's `onHeaderField`). */
  onHeaderField: (name: Buffer) => number;
  /** An answer's end (undici's `onMessageComplete`): keeps the connection for the next request when `shouldKeepAlive`. */
  onMessageComplete: () => number;
  /** The answer's status, while it is read (0 once it is complete). */
  statusCode: number;
  /** The Content-Length undici read (its fields' values joined), which it checks the body against at the answer's end. */
  contentLength: string;
  /** undici's keep-alive decision for the answer, made at its head. */
  shouldKeepAlive: boolean;
  /** undici's timer of the head wait, which it refreshes on an interim answer when it finds it here. */
  timeout: unknown;
  /** Reads what is left once the origin closed its end (undici's `finish`); an error, or null. */
  finish: () => Error | null;
  /** The error undici throws for llhttp's error code `ret` (undici's `createError`), from `execute` or `finish`. */
  createError: (ret: number, data: Buffer) => Error;
  /** The fields read so far of a head or a trailer section ([name, value, …]), handed to `onMessageComplete`'s request as its trailers. */
  headers: Buffer[];
  /** Parses `chunk` (undici's `execute`); sets `paused` when a handler asked for a pause. */
  execute: (chunk: Buffer) => void;
  paused: boolean;
  ptr: number | null;
  socket: Socket;
  llhttp: {
    llhttp_resume: (ptr: number) => void;
    llhttp_should_keep_alive: (ptr: number) => number;
    llhttp_set_lenient_version: (ptr: number, enabled: number) => void;
    llhttp_set_lenient_chunked_length: (ptr: number, enabled: number) => void;
    llhttp_get_http_major: (ptr: number) => number;
    llhttp_get_http_minor: (ptr: number) => number;
  };
}

/** undici's parser on `socket`, or undefined when it is not where undici 7 keeps it. */
export function undiciParser(socket: Socket): Partial<UndiciParser> | undefined {
  const key = Object.getOwnPropertySymbols(socket).find((symbol) => symbol.description === 'parser');
  const parser = key === undefined ? undefined : (socket as unknown as Record<symbol, unknown>)[key];
  return parser != null && typeof parser === 'object' ? (parser as Partial<UndiciParser>) : undefined;
}
