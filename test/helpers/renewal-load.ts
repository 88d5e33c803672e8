/**
 * Steady load on one name while a certificate is renewed (acme-renew, acme-renew-reload-storm): clients each making
 * one request per new TLS connection, so every request is a full handshake, counting the serials served and every
 * failure; and the token's key ids, to see the previous key deleted.
 */
import https from 'node:https';
import type { TLSSocket } from 'node:tls';
import type { AcmeLab } from './pebble.js';

/** The key ids in the lab's token (`keyedge key list`). */
export async function tokenKeyIds(cli: AcmeLab['cli'], keyserverConfig: string): Promise<string[]> {
  const listed = await cli(['key', 'list', '--json', '--config', keyserverConfig], 30_000);
  if (listed.code !== 0) throw new Error(`keyedge key list failed (exit ${listed.code}): ${listed.stderr.trim() || 'no stderr (killed by the 30 s timeout?)'}`);
  return (JSON.parse(listed.stdout) as { keyId: string }[]).map((k) => k.keyId);
}

/** One request on a new connection; resolves with the served certificate's serial, or throws. */
export function getOnce(port: number, name: string, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, servername: name, headers: { host: name }, ca, agent: false, timeout: 15_000 }, (res) => {
      const serial = (res.socket as TLSSocket).getPeerCertificate().serialNumber;
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve(serial) : reject(new Error(`status ${res.statusCode}`))));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

export interface SteadyLoad {
  /** Requests served, by the serial of the certificate that served them. */
  readonly serials: Map<string, number>;
  /** Why each failed request failed. */
  readonly failures: string[];
  /** Ends the load once each client's request in flight is done. */
  stop(): Promise<void>;
}

/** `clients` clients requesting `name` back to back, each on a new connection, until stopped. */
export function steadyLoad(port: number, name: string, ca: string, clients = 4): SteadyLoad {
  let running = true;
  const serials = new Map<string, number>();
  const failures: string[] = [];
  const client = async (): Promise<void> => {
    while (running) {
      try {
        const serial = await getOnce(port, name, ca);
        serials.set(serial, (serials.get(serial) ?? 0) + 1);
      } catch (err) {
        failures.push((err as Error).message);
      }
    }
  };
  const loops = Array.from({ length: clients }, () => client());
  return {
    serials,
    failures,
    stop: async () => {
      running = false;
      await Promise.all(loops);
    },
  };
}
