/**
 * What a sign keeps of the client's read, and what goes to a signing thread: on a real SoftHSM2 token, SIGN frames
 * decoded from inside a 64 KiB read (as the framer hands them over: a view of the chunk) are signed through the real
 * SigningWorkers with their threads up and the inline budget spent, so most go to the threads. Every input posted to
 * a thread (what a queued sign keeps) must be exactly its own bytes: a view of the read posted the whole 64 KiB
 * (structured clone copies a typed array's whole ArrayBuffer) and kept it until the sign settled; an RSA-PKCS1 input
 * made with Buffer.concat posted Node's 8 KiB pool slab. (What the service's answer keeps of a waiting sign's request
 * is its id and algorithm only: service.ts.)
 */
import { constants, createHash, createPublicKey, verify } from 'node:crypto';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import { Algorithm, type AlgorithmByte, algorithmInfo } from '../keyserver/protocol/constants.js';
import { decodeRequest, encodeRequest } from '../keyserver/protocol/codec.js';
import { generateKey } from '../keyserver/token/key-generate.js';
import type { TokenKey } from '../keyserver/token/keys.js';
import { type Job, SignThread } from '../keyserver/token/sign-thread.js';
import { type SigningLab, startSigningWorkers } from './helpers/signing-workers.js';

const READ_BYTES = 64 * 1024;
/** Signs asked for in one turn of the loop: far past what the inline budget (2 ms of signing) takes. */
const SIGNS_PER_ALGORITHM = 120;

let lab: SigningLab;
let env: SigningLab['env'];
let signers: SigningLab['signers'];
let ec: TokenKey;
let rsa: TokenKey;
beforeAll(async () => {
  lab = await startSigningWorkers('sign-input-test', 60_000);
  ({ env, signers } = lab);
  ec = generateKey(env.token, 'ec-p256', 'input-ec');
  rsa = generateKey(env.token, 'rsa-2048', 'input-rsa');
}, 60_000);
afterAll(async () => {
  await lab?.close();
});

/** A SIGN frame for `key` in the middle of a 64 KiB read, decoded from a view of it (framer.ts's one-chunk case). */
function signFromRead(key: TokenKey, algorithm: AlgorithmByte, id: number) {
  const info = algorithmInfo(algorithm)!;
  const digest = createHash(info.hash).update(`message ${id}`).digest();
  const frame = encodeRequest({ op: 'sign', id, keyId: Buffer.from(key.keyId, 'hex'), algorithm, digest });
  const read = Buffer.alloc(READ_BYTES, 0x5a);
  const at = 1000;
  frame.copy(read, at);
  const request = decodeRequest(read.subarray(at, at + frame.length));
  if (request.op !== 'sign') throw new Error('not a sign');
  return { key, request, info, message: `message ${id}` };
}

/** Whether `bytes` is exactly the bytes of an ArrayBuffer of its own. */
function ownsItsBytes(bytes: Uint8Array): boolean {
  return bytes.byteOffset === 0 && bytes.buffer.byteLength === bytes.byteLength;
}

it('a sign posted to a thread carries only its input, and keeps nothing of the read it came in', async () => {
  const posted: Job[] = [];
  const realPost = SignThread.prototype.post;
  const spy = vi.spyOn(SignThread.prototype, 'post').mockImplementation(function (this: SignThread, batch: Job[]) {
    posted.push(...batch);
    realPost.call(this, batch);
  });
  try {
    const cases: { key: TokenKey; algorithm: AlgorithmByte }[] = [
      { key: ec, algorithm: Algorithm.ECDSA_SHA256 },
      { key: rsa, algorithm: Algorithm.RSA_PKCS1_SHA256 },
      { key: rsa, algorithm: Algorithm.RSA_PSS_SHA384 },
    ];
    const requests: ReturnType<typeof signFromRead>[] = [];
    let id = 0;
    for (let i = 0; i < SIGNS_PER_ALGORITHM; i++) for (const { key, algorithm } of cases) requests.push(signFromRead(key, algorithm, ++id));
    // Asked for back to back, as a pipelining client's frames are: past the inline budget, they queue for the threads.
    const signed = requests.map(({ request, info, key }) =>
      signers.sign(key, { scheme: info.scheme, hash: info.hash, digest: request.digest }, Date.now() + 60_000),
    );
    const signs = signed.map((one, i) =>
      Promise.resolve(one).then((signature) => {
        const { key, info, message } = requests[i]!;
        const publicKey = createPublicKey({ key: key.spki, format: 'der', type: 'spki' });
        const options =
          info.scheme === 'ecdsa'
            ? { key: publicKey, dsaEncoding: 'ieee-p1363' as const }
            : info.scheme === 'rsa-pss'
              ? { key: publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: info.digestBytes }
              : { key: publicKey };
        return { ok: verify(info.hash, Buffer.from(message), options, signature) };
      }),
    );
    const results = await Promise.all(signs);
    expect(results.every((r) => r.ok)).toBe(true);
    // Most went to the threads: the budget for inline signs is a few ms.
    expect(posted.length).toBeGreaterThan(SIGNS_PER_ALGORITHM / 4);
    // The input above all; the key handle and an RSA key's SPKI (checked on the thread) too.
    const carried = posted.flatMap((job) => [job.input, job.key, ...(job.verify === undefined ? [] : [job.verify.spki])]);
    const oversized = carried.filter((bytes) => !ownsItsBytes(bytes));
    const sizes = [...new Set(oversized.map((bytes) => `${bytes.byteLength} bytes posting ${bytes.buffer.byteLength}`))];
    expect(sizes, `${oversized.length} of ${carried.length} Buffers posted carry more than their bytes`).toEqual([]);
  } finally {
    spy.mockRestore();
  }
}, 60_000);
