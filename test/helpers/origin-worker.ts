/**
 * The set-up of the tests that script an origin's answers (scripted-origin.ts, or a raw origin of their own): the
 * origin listened on a loopback port, then one proxy worker in this process serving the lab's certificate for `host`
 * and forwarding it there, its log lines (level info: the access lines) collected into `lines`. Apart from
 * proxy-lab.ts, which most tests import without wanting the worker's modules.
 */
import type net from 'node:net';
import { createLogger } from '../../keyserver/shared/log.js';
import { type RunningWorker, startProxyWorker } from '../../proxy/worker.js';
import { jsonLineSink, type KeylessLab } from './proxy-lab.js';

export interface OriginWorkerOptions {
  /** A certificate entry of the config: its name and chain file (lab.certificate's `file`). */
  readonly certificate: { readonly name: string; readonly chain: string };
  readonly host: string;
  /** Not listening yet: listened on 127.0.0.1 at port 0 here. */
  readonly origin: net.Server;
  /** The config's `limits`, where the test sets some. */
  readonly limits?: Record<string, unknown>;
  /** The logger's name in each line. */
  readonly logName: string;
  readonly lines: Record<string, unknown>[];
}

export async function startOriginWorker(lab: KeylessLab, options: OriginWorkerOptions): Promise<RunningWorker> {
  const { certificate, host, origin, limits, logName, lines } = options;
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  return startProxyWorker(
    lab.proxyConfig({
      certificates: [certificate],
      ...(limits === undefined ? {} : { limits }),
      domains: [{ name: host, origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` }],
    }),
    { log: createLogger(logName, 'info', jsonLineSink(lines)) },
  );
}
