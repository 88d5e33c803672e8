/**
 * The handshake bench's second ALPN client (issue 13): nghttp2's h2load, in batches of `size` new connections (as many
 * clients as requests, so each connection is one full TLS 1.3 handshake and one GET), `loops` batches at a time,
 * offering only `protocol`, until stopped. Counted per batch: the GETs that got a 2xx.
 *
 * Why a second client: an h2 connection's frames besides the request cost a server passes through its read path, and
 * clients differ in how many passes they make it take. node:http2's client (alpn.ts) acknowledges the server's
 * SETTINGS in a write of its own and sends GOAWAY in another; nghttp2's clients (h2load, nghttp, curl) and browsers
 * send what they have in one flight. The pair is measured with both, and nginx with both, in the same run.
 * h2load's CPU is its own processes', not this one's: no client µs for it.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ClosedLoop } from '../harness/stats.js';

const execFileAsync = promisify(execFile);

type H2loadOptions = { readonly port: number; readonly serverName: string; readonly protocol: 'h2' | 'http/1.1' } & {
  readonly loops: number;
  readonly size: number;
};

/** h2load's arguments for one batch: `size` connections, one GET each, SNI and :authority `serverName`, to 127.0.0.1. */
export function h2loadBatchArgs(o: Omit<H2loadOptions, 'loops'>): string[] {
  const url = `https://${o.serverName}:${o.port}/`;
  return ['-n', String(o.size), '-c', String(o.size), `--npn-list=${o.protocol}`, `--connect-to=127.0.0.1:${o.port}`, url];
}

/** The GETs of a batch that got a 2xx, from h2load's summary ("status codes: N 2xx, …"). */
export function servedOf(stdout: string): number {
  return Number(/status codes: (\d+) 2xx/.exec(stdout)?.[1] ?? 'NaN');
}

export class H2loadLoad extends ClosedLoop {
  /** The client runs in processes of its own: its CPU is not this process's. */
  readonly external = true;

  constructor(readonly options: H2loadOptions) {
    super();
  }

  protected begin(): void {
    this.outstanding = this.options.loops;
    for (let i = 0; i < this.options.loops; i++) void this.#loop();
  }

  async #loop(): Promise<void> {
    const { size } = this.options;
    while (!this.stopped) {
      let served = 0;
      try {
        const { stdout } = await execFileAsync('h2load', h2loadBatchArgs(this.options), { maxBuffer: 1 << 20 });
        served = servedOf(stdout);
        if (!Number.isFinite(served)) throw new Error(`h2load printed no status codes: ${stdout.slice(-200)}`);
      } catch (err) {
        this.firstError ??= (err as Error).message;
      }
      this.completed += served;
      this.errors += size - served;
      if (served < size) this.firstError ??= `h2load: ${size - served} of ${size} GETs got no 2xx`;
    }
    this.retire();
  }
}
