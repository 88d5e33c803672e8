/**
 * Cuts a secured TLS connection whose client sends records that carry no
 * application data past a budget: TLS 1.3 KeyUpdate above all (RFC 8446
 * §4.6.3). Each one costs the worker a key derivation and a new cipher
 * context, and one with update_requested a KeyUpdate of its own back.
 * OpenSSL 3 takes them without limit and Node tells JavaScript nothing of
 * them (no event, no count), so one connection sending them in a loop kept a
 * worker busy for as long as it liked (about 20 µs of worker CPU per
 * 27-byte record: 1 MB/s of them is most of a core), past every HTTP limit,
 * and was never closed.
 *
 * What can be measured is bytes: the TCP socket's bytes read (every TLS
 * record) against the TLS socket's (the application data they carried,
 * whoever reads it: the HTTP parser, nghttp2, a WebSocket pipe). The
 * difference is framing. Each connection has a credit of framing bytes,
 * RECORD_BUDGET_BYTES at first and at most: records without data draw on it,
 * and data adds DATA_FACTOR times its size back. A record with data costs at
 * most 29 bytes of framing (TLS 1.2 AES-GCM, the profiles' worst; 22 in TLS
 * 1.3), so any record with 4 bytes of data or more pays for itself (an
 * HTTP/2 frame has 9 at least); what the credit covers is the handshake's
 * tail, a record read but not yet decrypted (16 KiB at most), bursts of tiny
 * records, and the odd record without data: 64 KiB are about 2,400 KeyUpdates,
 * where a client rekeys once per gigabytes. It cannot be saved up beyond its
 * cap (a large upload first buys no flood later). Once it is spent, the
 * connection is destroyed and logged.
 *
 * Checked on one timer per listener, every CHECK_MS, over the connections
 * it secured: nothing runs per record or per read, and the timer runs only
 * while there is a connection to check. A flood is cut within about one tick
 * of spending the credit.
 */
import type net from 'node:net';
import type tls from 'node:tls';
import type { Logger } from '../../keyserver/shared/log.js';

/** A connection's credit of framing bytes, at first and at most. */
export const RECORD_BUDGET_BYTES = 64 * 1024;
/** Framing bytes each byte of application data adds to the credit (a record costs 22 to 29). */
export const DATA_FACTOR = 8;
const CHECK_MS = 500;

interface Watched {
  readonly raw: net.Socket;
  /** Bytes read on each side at the last check (at first, when the handshake completed). */
  rawRead: number;
  dataRead: number;
  credit: number;
}

export class RecordFloodGuard {
  readonly #log: Logger;
  readonly #listenerId: () => string;
  readonly #onCut: () => void;
  readonly #watched = new Map<tls.TLSSocket, Watched>();
  #timer: NodeJS.Timeout | undefined = undefined;

  /** `onCut` runs once per connection closed (the metric). */
  constructor(log: Logger, listenerId: () => string, onCut: () => void = () => {}) {
    this.#log = log;
    this.#listenerId = listenerId;
    this.#onCut = onCut;
  }

  /** Watches `socket` (secured over `raw`) from the end of its handshake until it closes. */
  watch(raw: net.Socket, socket: tls.TLSSocket): void {
    this.#watched.set(socket, { raw, rawRead: raw.bytesRead, dataRead: socket.bytesRead, credit: RECORD_BUDGET_BYTES });
    socket.once('close', () => this.#forget(socket));
    this.#timer ??= setInterval(() => this.check(), CHECK_MS).unref();
  }

  /** Open connections being watched. */
  get size(): number {
    return this.#watched.size;
  }

  /** One pass over the watched connections: each that spent its credit is destroyed. */
  check(): void {
    for (const [socket, watched] of this.#watched) {
      const rawRead = watched.raw.bytesRead;
      const dataRead = socket.bytesRead;
      const data = dataRead - watched.dataRead;
      const framing = rawRead - watched.rawRead - data;
      watched.rawRead = rawRead;
      watched.dataRead = dataRead;
      watched.credit = Math.min(RECORD_BUDGET_BYTES, watched.credit + DATA_FACTOR * data - framing);
      if (watched.credit >= 0) continue;
      this.#log.info(
        { client: watched.raw.remoteAddress, listener: this.#listenerId(), framingBytes: framing, dataBytes: data },
        'TLS connection closed: records without application data past its credit (a KeyUpdate flood)',
      );
      this.#forget(socket);
      this.#onCut();
      socket.destroy();
    }
  }

  #forget(socket: tls.TLSSocket): void {
    this.#watched.delete(socket);
    if (this.#watched.size > 0 || this.#timer === undefined) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
