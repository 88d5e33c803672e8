import net from 'node:net';
import { readFileSync } from 'node:fs';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyserverClient } from '../keyserver/client/client.js';
import { createLogger } from '../keyserver/shared/log.js';
import { ChallengeAnswers, ChallengeBoard } from '../proxy/acme/challenges.js';
import { ACME_LINGER_MS } from '../proxy/acme/tls-alpn.js';
import { startProxyWorker } from '../proxy/worker.js';
import { publishAlpnChallenge } from './helpers/alpn-challenge.js';
import { nodeGet } from './helpers/clients.js';
import { ecAndRsaServing, type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// RFC 8737 §3: an acme-tls/1 connection is closed once its handshake is done. A client that completes that handshake
// and never closes its side (never sends FIN, never reads) must not hold the connection, its file descriptor and its
// per-client and per-worker connection slots until the worker stops: the handshake deadline is cleared at 'secure'.
let lab: KeylessLab;

beforeAll(async () => {
  lab = await startKeylessLab();
}, 60_000);
afterAll(async () => {
  await lab?.close();
});

/**
 * An acme-tls/1 handshake for `servername` whose client then goes silent: reads nothing more, closes nothing (its TCP
 * socket is half-open, so the server's FIN draws no FIN back). Resolves with the negotiated protocol and the raw socket.
 */
function silentAcmeClient(port: number, servername: string): Promise<{ alpn: string | false | null; raw: net.Socket }> {
  return new Promise((resolve, reject) => {
    const raw = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    raw.on('error', () => undefined);
    let forward = true;
    const duplex = new Duplex({
      read() {},
      write(chunk, _encoding, done) {
        raw.write(chunk, done);
      },
    });
    raw.on('data', (d: Buffer) => {
      if (forward) duplex.push(d);
    });
    const socket = tls.connect({ socket: duplex, servername, ALPNProtocols: ['acme-tls/1'], rejectUnauthorized: false }, () => {
      forward = false;
      resolve({ alpn: socket.alpnProtocol, raw });
    });
    socket.on('error', reject);
  });
}

describe('an acme-tls/1 client that completes its handshake and then holds the connection', () => {
  it('has it closed after a short grace, freeing its per-client connection slots', async () => {
    const answers = new ChallengeAnswers();
    const board = new ChallengeBoard(async (message) => answers.apply(message));
    const perClient = 3;
    const worker = await startProxyWorker(
      lab.proxyConfig({
        ...(await ecAndRsaServing(lab)),
        listen: [{ host: '127.0.0.1', port: 0, profile: 'intermediate' }],
        limits: { maxConnectionsPerClient: perClient, handshakeTimeoutMs: 1_000 },
      }),
      { log: createLogger('alpn-linger-test', 'silent'), challenges: answers },
    );
    const client = await KeyserverClient.connect({ unixPath: lab.socket });
    const held: net.Socket[] = [];
    try {
      await publishAlpnChallenge(board, lab, client, 'new.lab.test');
      const port = worker.ports[0]!;
      const ca = readFileSync(lab.caFile, 'utf8');
      for (let i = 0; i < perClient; i++) {
        const { alpn, raw } = await silentAcmeClient(port, 'new.lab.test');
        expect(alpn).toBe('acme-tls/1');
        held.push(raw);
      }
      // While they are held the client's slots are taken: another connection of its is closed at accept.
      expect((await nodeGet(port, 'ec.lab.test', ca)).ok).toBe(false);
      // After the grace the held connections are closed by the proxy and the client is served again; without a bound
      // they stayed until the worker stopped. Generous: polled for three graces and more, well past the handshake deadline.
      const until = Date.now() + 3 * ACME_LINGER_MS + 5_000;
      let served = false;
      while (!served && Date.now() < until) {
        await new Promise((resolve) => setTimeout(resolve, 500));
        served = (await nodeGet(port, 'ec.lab.test', ca)).ok;
      }
      expect(served, `the client's ${perClient} silent acme-tls/1 connections still hold its slots`).toBe(true);
    } finally {
      for (const raw of held) raw.destroy();
      client.close();
      await worker.close();
    }
  }, 60_000);
});
