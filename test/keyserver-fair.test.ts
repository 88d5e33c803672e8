/**
 * Fair queuing of signs waiting for a signing thread (sign-queue.ts): one
 * connection's backlog does not hold up another connection's sign. A real key
 * server on SoftHSM2 and real client connections; asserted by the order the
 * answers arrive in, never by time: a loaded machine slows both sides alike.
 *
 * Each case writes a flooder's burst and then another connection's signs in
 * the same tick, each in one write, so the key server reads the whole burst
 * first (the kernel reports the sockets ready in the order their data came). The other connection sends
 * more than one sign: one alone may be signed inline on the event loop (its
 * budget refills while the threads sign, sign-workers.ts), ahead of any queue;
 * the rest wait for a thread, where the order is decided.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { encodeRequest } from '../keyserver/protocol/codec.js';
import { Algorithm, type AlgorithmByte } from '../keyserver/protocol/constants.js';
import type { RunningKeyserver } from '../keyserver/server/daemon.js';
import { removeDir, tempDir } from './helpers/basics.js';
import { captureLog, digestOf, type ProvisionedKey, provisionKeys, RawConnection, startTestKeyserver, testConfig, verifies } from './helpers/keyserver.js';

/**
 * The flooder's signs, all in flight at once (the cap on requests in flight is raised above it). Large enough that
 * what may come ahead of another connection's sign whatever the queue does (the signs made inline while the burst is
 * read, more on a loaded machine whose clock runs on while the loop waits for a core; the batches already posted to
 * the threads) stays well under half of it.
 */
const BURST = 1_000;
/** The other connection's signs: more than the event loop's inline budget takes at once. */
const FEW = 8;

let stateDir: string;
let server: RunningKeyserver;
let keys: Record<string, ProvisionedKey>;
const connections: RawConnection[] = [];
let nextId = 1;

beforeAll(async () => {
  stateDir = tempDir();
  // A deadline no loaded machine reaches: the order of the answers is the test, never a refusal.
  const limits = { maxInFlightPerConnection: 2_048, requestTimeoutMs: 20_000 };
  const config = testConfig(stateDir, { log: { level: 'info' }, limits });
  keys = provisionKeys(config, [
    { label: 'rsa', type: 'rsa-2048' },
    { label: 'ec', type: 'ec-p256' },
  ]);
  server = await startTestKeyserver(config, captureLog('info'));
}, 60_000);

afterAll(async () => {
  for (const connection of connections) connection.close();
  await server?.close();
  if (stateDir !== undefined) removeDir(stateDir);
});

async function connect(): Promise<RawConnection> {
  const connection = await RawConnection.connect(server.unixPath!);
  connections.push(connection);
  return connection;
}

interface Signs {
  /** The request ids, in the order written. */
  readonly ids: number[];
  /** Whether every answer is a signature that verifies, once all have arrived. */
  verified(): Promise<boolean>;
}

/**
 * Writes these signs on `connection` in one write: the key server reads them in one go, as it would a client's
 * pipelined burst (written a frame at a time, a burst this large would reach the server in pieces as the socket's
 * buffer fills and drains, another connection's frames in between).
 */
function writeSigns(connection: RawConnection, plan: readonly { key: ProvisionedKey; algorithm: AlgorithmByte }[]): Signs {
  const signs = plan.map(({ key, algorithm }) => ({ id: nextId++, key, algorithm, message: randomBytes(40) }));
  const frames = signs.map(({ id, key, algorithm, message }) =>
    encodeRequest({ op: 'sign', id, keyId: Buffer.from(key.keyId, 'hex'), algorithm, digest: digestOf(algorithm, message) }),
  );
  connection.write(Buffer.concat(frames));
  return {
    ids: signs.map((sign) => sign.id),
    verified: async () => {
      const answers = await Promise.all(signs.map((sign) => connection.answer(sign.id, 30_000)));
      return answers.every((answer, i) => {
        const { key, algorithm, message } = signs[i]!;
        return answer.op === 'signature' && verifies(algorithm, message, key.publicKey, answer.signature);
      });
    },
  };
}

const rsa = (count: number) => Array.from({ length: count }, () => ({ key: keys.rsa!, algorithm: Algorithm.RSA_PSS_SHA256 }));

it("a connection's burst of RSA signs does not hold up another connection's few: they are answered before half the burst", async () => {
  // Before: requests waited for a thread first come first served, and the other's signs past the event loop's inline
  // budget (an RSA-2048 sign is about a third of it) came after nearly the whole burst (880 of 1,000 answers).
  const flooder = await connect();
  const other = await connect();
  const burst = writeSigns(flooder, rsa(BURST));
  // A proxy's handshakes under way: a few signs at once, one of them ECDSA.
  const few = writeSigns(other, [{ key: keys.ec!, algorithm: Algorithm.ECDSA_SHA256 }, ...rsa(FEW - 1)]);
  const answersBeforeOthersLast = (await Promise.all(few.ids.map((id) => other.answer(id, 30_000).then(() => flooder.responses.length)))).at(-1)!;
  expect(await few.verified()).toBe(true);
  expect(await burst.verified()).toBe(true);
  // Ahead of the last at most: the signs made inline while the burst was read, those already sent to the threads
  // (a short window of small batches each), and one of the flooder's per turn: a few dozen. Half the burst is a wide margin.
  expect(answersBeforeOthersLast).toBeLessThan(BURST / 2);
});

it('two connections bursting at once take turns: the second is not served only after the first', async () => {
  const first = await connect();
  const second = await connect();
  const firsts = writeSigns(first, rsa(BURST));
  const seconds = writeSigns(second, rsa(BURST / 4));
  const half = seconds.ids[BURST / 8 - 1]!;
  const firstAnswersAtSecondsHalf = await second.answer(half, 30_000).then(() => first.responses.length);
  expect(await firsts.verified()).toBe(true);
  expect(await seconds.verified()).toBe(true);
  // Taking turns, half the second's signs come after about as many of the first's (plus those signed inline and those
  // already sent to the threads): well before the first's burst is half answered. First come first served, after all of it.
  expect(firstAnswersAtSecondsHalf).toBeLessThan(BURST / 2);
});
