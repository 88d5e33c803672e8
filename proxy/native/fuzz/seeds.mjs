/**
 * Seed corpora for the fuzz targets (README.md, "Fuzzing"): valid answers per
 * keyserver/protocol/SPEC.md for fuzz_answer, our PEM block for fuzz_pem.
 * Usage: node seeds.mjs DIR  (writes DIR/answer/ and DIR/pem/)
 */
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
if (dir === undefined) throw new Error('usage: node seeds.mjs DIR');
for (const sub of ['answer', 'pem']) mkdirSync(join(dir, sub), { recursive: true });
const item = (tag, v) => Buffer.concat([Buffer.from([tag, v.length >> 8, v.length & 255]), v]);
const frame = (op, id, body) => {
  const h = Buffer.alloc(12);
  h[0] = 1;
  h[1] = op;
  h.writeUInt32BE(id, 4);
  h.writeUInt32BE(body.length, 8);
  return Buffer.concat([h, body]);
};
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const ec384 = generateKeyPairSync('ec', { namedCurve: 'P-384' });
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const d = Buffer.alloc(32, 7);
const ecSig = sign('sha256', d, ec.privateKey);
const rsaSig = sign('sha256', d, rsa.privateKey);
let n = 0;
// fuzz_answer input: flags (bit 0: patch the request id, bits 1-3: algorithm, bit 4: dry stream times out, bits 5-7: most bytes per recv) | sigmax selector | stream
const answer = (flags, sel, ...frames) => writeFileSync(join(dir, 'answer', `seed${n++}`), Buffer.concat([Buffer.from([flags, sel]), ...frames]));
answer(1, 0, frame(0x83, 1, item(5, ecSig)));
answer(1 | (1 << 1), 1, frame(0x83, 1, item(5, sign('sha384', d, ec384.privateKey))));
answer(1 | (3 << 1), 3, frame(0x83, 1, item(5, rsaSig)));
answer(1 | (6 << 1), 3, frame(0x83, 1, item(5, rsaSig)), frame(0x83, 2, item(5, rsaSig)));
answer(1, 0, frame(0xff, 1, Buffer.concat([item(7, Buffer.from([0, 5])), item(0x80, Buffer.from('unknown key'))])), frame(0x83, 2, item(5, ecSig)));
answer(1, 0, frame(0xff, 1, Buffer.concat([item(0xf0, Buffer.from('later')), item(7, Buffer.from([0, 11])), item(0x80, Buffer.from('busy'))])));
answer(1, 0, frame(0xff, 1, item(7, Buffer.from([0, 13]))));
answer(1, 0, frame(0x83, 1, Buffer.concat([item(0x81, Buffer.alloc(3)), item(5, ecSig)])));
answer(0, 0, frame(0x83, 1, item(5, ecSig)));
answer(1 | 16, 0, frame(0x83, 1, item(5, ecSig)).subarray(0, 30));
answer(1 | (1 << 5), 0, frame(0x83, 1, item(5, ecSig)), frame(0x83, 2, item(5, ecSig)));
answer(1 | (4 << 5), 3, frame(0x83, 1, item(5, rsaSig)), frame(0x83, 2, item(5, rsaSig)));
answer(1, 0, frame(0xff, 1, Buffer.concat([item(7, Buffer.from([0, 200])), item(0x80, Buffer.alloc(512, 0x41))])));

// fuzz_pem input: chunk size byte | PEM text, or 0xff | version | key id (replaced by the SPKI's hash) | SPKI DER
const block = (spki) => {
  const body = Buffer.concat([Buffer.from([1]), createHash('sha256').update(spki).digest(), spki]);
  return `-----BEGIN KEYEDGE KEYLESS KEY-----\n${body
    .toString('base64')
    .match(/.{1,64}/g)
    .join('\n')}\n-----END KEYEDGE KEYLESS KEY-----\n`;
};
const pem = (name, bytes) => writeFileSync(join(dir, 'pem', name), bytes);
const spki = (type, options) => generateKeyPairSync(type, options).publicKey.export({ type: 'spki', format: 'der' });
const ecSpki = ec.publicKey.export({ type: 'spki', format: 'der' });
const rsaSpki = rsa.publicKey.export({ type: 'spki', format: 'der' });
pem('ec', Buffer.concat([Buffer.from([1]), Buffer.from(block(ecSpki))]));
pem('rsa', Buffer.concat([Buffer.from([2]), Buffer.from(block(rsaSpki))]));
pem('text-before', Buffer.concat([Buffer.from([0]), Buffer.from(`junk before\n${block(rsaSpki)}`)]));
pem('two-blocks', Buffer.concat([Buffer.from([3]), Buffer.from(block(ecSpki) + block(rsaSpki))]));
const others = [
  ['ec', { namedCurve: 'P-384' }],
  ['ed25519', {}],
  ['rsa-pss', { modulusLength: 1024 }],
  ['x25519', {}],
  ['ec', { namedCurve: 'secp256k1' }],
];
for (const [i, [type, options]] of others.entries()) pem(`body${i}`, Buffer.concat([Buffer.from([0xff, 1]), Buffer.alloc(32), spki(type, options)]));
pem('body-ec', Buffer.concat([Buffer.from([0xff, 1]), Buffer.alloc(32), ecSpki]));
