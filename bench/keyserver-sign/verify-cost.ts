/**
 * What checking a signature before it is sent costs next to making it (keyserver/token/sign-verify.ts): CPU per
 * operation of node:crypto's sign and verify for RSA-2048, RSA-3072, EC P-256 and EC P-384 (SHA-256, one thread),
 * and of the key server's own check of an RSA signature (RSAVP1 and the PKCS#1 v1.5 or PSS encoding, as the signing
 * threads run it). A token's sign costs at least node:crypto's (SoftHSM2 uses the same OpenSSL, plus its own
 * overhead; bench/results/2026-12-03-keyserver-sign.md has its figures). `--rounds N` (default 5) interleaved rounds;
 * the table gives the median and the min–max per operation, in µs of process CPU (user + system).
 *
 * Run: `npm run build:bench && node dist/bench/keyserver-sign/verify-cost.js`
 */
import { constants, createHash, generateKeyPairSync, type KeyObject, sign, verify } from 'node:crypto';
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { keyIdOf } from '../../keyserver/shared/key-id.js';
import { checkSignature, type VerifySpec } from '../../keyserver/token/sign-verify.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' } } });
const ROUNDS = Number(values.rounds);
/** CPU time each measurement runs for, about. */
const TARGET_MS = 300;

interface Subject {
  readonly name: string;
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  readonly rsa: boolean;
}

function subject(name: string, type: 'rsa' | 'ec', option: number | string): Subject {
  const { privateKey, publicKey } =
    type === 'rsa' ? generateKeyPairSync('rsa', { modulusLength: option as number }) : generateKeyPairSync('ec', { namedCurve: option as string });
  return { name, privateKey, publicKey, rsa: type === 'rsa' };
}

/** µs of process CPU per call of `op`, over about TARGET_MS (calibrated on a first run). */
function cpuPerOp(op: () => void): number {
  const warm = process.cpuUsage();
  let calls = 0;
  do {
    op();
    calls++;
  } while ((process.cpuUsage(warm).user + process.cpuUsage(warm).system) / 1000 < 30);
  const perOpUs = (process.cpuUsage(warm).user + process.cpuUsage(warm).system) / calls;
  const n = Math.max(20, Math.round((TARGET_MS * 1000) / perOpUs));
  const start = process.cpuUsage();
  for (let i = 0; i < n; i++) op();
  const used = process.cpuUsage(start);
  return (used.user + used.system) / n;
}

const subjects = [subject('RSA-2048', 'rsa', 2048), subject('RSA-3072', 'rsa', 3072), subject('EC P-256', 'ec', 'P-256'), subject('EC P-384', 'ec', 'P-384')];
const message = Buffer.from('keyedge verify-cost');
const digest = createHash('sha256').update(message).digest();
const digestInfo = Buffer.concat([Buffer.from('3031300d060960864801650304020105000420', 'hex'), digest]);
const pss = { padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 };

type Row = { subject: Subject; op: string; run: () => void };
const rows: Row[] = [];
for (const s of subjects) {
  const spki = s.publicKey.export({ type: 'spki', format: 'der' });
  if (s.rsa) {
    const pkcs1 = sign('sha256', message, s.privateKey);
    const pssSignature = sign('sha256', message, { key: s.privateKey, ...pss });
    const spec = (scheme: VerifySpec['scheme']): VerifySpec => ({ keyId: keyIdOf(spki), spki, scheme, hash: 'sha256' });
    const [pkcs1Spec, pssSpec] = [spec('rsa-pkcs1'), spec('rsa-pss')];
    if (checkSignature(pkcs1Spec, digestInfo, pkcs1) !== undefined || checkSignature(pssSpec, digest, pssSignature) !== undefined) {
      throw new Error(`the key server's check refuses a good ${s.name} signature`);
    }
    rows.push(
      { subject: s, op: 'sign PKCS#1 v1.5', run: () => sign('sha256', message, s.privateKey) },
      { subject: s, op: 'sign PSS', run: () => sign('sha256', message, { key: s.privateKey, ...pss }) },
      { subject: s, op: 'verify PKCS#1 v1.5 (node:crypto)', run: () => verify('sha256', message, s.publicKey, pkcs1) },
      { subject: s, op: 'verify PSS (node:crypto)', run: () => verify('sha256', message, { key: s.publicKey, ...pss }, pssSignature) },
      { subject: s, op: 'key server check, PKCS#1 v1.5', run: () => checkSignature(pkcs1Spec, digestInfo, pkcs1) },
      { subject: s, op: 'key server check, PSS', run: () => checkSignature(pssSpec, digest, pssSignature) },
    );
  } else {
    const der = sign('sha256', message, s.privateKey);
    rows.push(
      { subject: s, op: 'sign ECDSA', run: () => sign('sha256', message, s.privateKey) },
      { subject: s, op: 'verify ECDSA (node:crypto)', run: () => verify('sha256', message, s.publicKey, der) },
    );
  }
}

const samples = new Map<Row, number[]>(rows.map((row) => [row, []]));
for (let round = 0; round < ROUNDS; round++) {
  // Rotated each round, so a drift in the machine's load falls on every operation alike.
  for (let i = 0; i < rows.length; i++) {
    const row = rows[(i + round) % rows.length]!;
    samples.get(row)!.push(cpuPerOp(row.run));
  }
}

const median = (xs: number[]): number => {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[sorted.length >> 1]!;
};
const fmt = (us: number): string => (us >= 100 ? us.toFixed(0) : us.toFixed(1));
console.log(`Node ${process.version}, OpenSSL ${process.versions.openssl}, ${cpus()[0]?.model ?? '?'}, ${ROUNDS} rounds of ~${TARGET_MS} ms each`);
console.log('');
console.log('| key | operation | µs CPU per op (median) | min–max | ÷ sign |');
console.log('|---|---|--:|--:|--:|');
for (const row of rows) {
  const xs = samples.get(row)!;
  const signRow = rows.find(
    (r) => r.subject === row.subject && r.op.startsWith('sign') && (row.op.includes('PSS') ? r.op.includes('PSS') : !r.op.includes('PSS')),
  )!;
  const ratio = median(xs) / median(samples.get(signRow)!);
  console.log(`| ${row.subject.name} | ${row.op} | ${fmt(median(xs))} | ${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))} | ${ratio.toFixed(2)} |`);
}
