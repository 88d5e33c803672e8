import { existsSync, mkdtempSync, readFileSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PACK_THRESHOLD, PackShelf, readPack, writePack } from '../proxy/serving/pack.js';
import type { CertificateRecord, ServingDelta } from '../proxy/serving/spec.js';
import { applyDelta, EMPTY_STATE, type ServingState } from '../proxy/serving/state.js';
import { openAfterGc, openFiles } from './helpers/open-files.js';

// A large delta goes to a worker as a file: the JSON part without chains,
// the chains read one at a time when a context is built.

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-serving-pack-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function record(i: number): CertificateRecord {
  return {
    name: `n${i}`,
    from: 'store',
    source: `/store/n${i}.pem`,
    // Multi-byte text too: offsets are in bytes, not characters.
    chainPem: `-----BEGIN CERTIFICATE-----\nchain ${i} ${'é'.repeat(i % 5)}\n-----END CERTIFICATE-----\n`,
    names: [`n${i}.example`],
    keyId: 'a'.repeat(64),
    spki: 'AAAA',
    serial: i.toString(16),
    issuer: 'CN=Test',
    notAfter: '2030-01-01T00:00:00.000Z',
    stapled: false,
    loadedAt: '2026-01-01T00:00:00.000Z',
    inputId: `store:${i.toString(16).padStart(64, '0')}`,
  };
}

function delta(generation: number, count: number): ServingDelta {
  return {
    generation,
    routing: { domains: [], sni: { default: null, onUnknown: 'reject' } },
    upsert: Array.from({ length: count }, (_, i) => record(i)),
    remove: ['gone'],
  };
}

describe('serving packs', () => {
  it('round-trips a delta, with chains left out of the JSON and read on access, also once the file is unlinked', () => {
    const original = delta(7, 50);
    const packed = writePack(dir, 'round-trip.pack', original);
    const json = readFileSync(packed.file).subarray(0, packed.jsonBytes).toString('utf8');
    expect(json).not.toContain('chain 3');
    const back = readPack(packed);
    // The reader holds the file open: the primary may unlink it at once.
    unlinkSync(packed.file);
    expect(back.generation).toBe(7);
    expect(back.remove).toEqual(['gone']);
    expect(back.routing).toEqual(original.routing);
    expect(back.upsert.map((r) => ({ ...r }))).toEqual(original.upsert);
  });

  it('sends small deltas inline, large ones as one file per generation, unlinked once every worker opened it or died', () => {
    const shelf = new PackShelf<string>();
    const small = shelf.wire('delta', delta(1, 3), 'w1');
    expect('delta' in small).toBe(true);

    const big = delta(2, PACK_THRESHOLD + 1);
    const toW1 = shelf.wire('snapshot', big, 'w1');
    const toW2 = shelf.wire('snapshot', big, 'w2');
    if (!('packed' in toW1) || !('packed' in toW2)) throw new Error('expected packs');
    expect(toW2.packed.file).toBe(toW1.packed.file);
    // The delta that made generation 2 is not its snapshot.
    const asDelta = shelf.wire('delta', big, 'w1');
    if (!('packed' in asDelta)) throw new Error('expected a pack');
    expect(asDelta.packed.file).not.toBe(toW1.packed.file);

    expect(readPack(toW1.packed).upsert).toHaveLength(PACK_THRESHOLD + 1);
    shelf.opened('w1', toW1.packed.file);
    expect(existsSync(toW1.packed.file)).toBe(true);
    shelf.gone('w2');
    expect(existsSync(toW1.packed.file)).toBe(false);
    shelf.opened('w1', asDelta.packed.file);
    expect(existsSync(asDelta.packed.file)).toBe(false);

    const left = shelf.wire('delta', delta(3, PACK_THRESHOLD + 1), 'w1');
    if (!('packed' in left)) throw new Error('expected a pack');
    shelf.close();
    expect(existsSync(dirname(left.packed.file))).toBe(false);
  });

  // A worker keeps a pack open while its state reads from it, and the primary unlinks the file once the workers opened
  // it. Each state made from a pack held the state before it (the closure of its views kept applyDelta's scope), so
  // every whole state a worker was ever sent stayed in memory, its pack's descriptor open and the file's disk space held.
  it('a state made from a pack holds no earlier state, nor its pack open', async () => {
    const files: string[] = [];
    let state: ServingState = EMPTY_STATE;
    for (let generation = 1; generation <= 3; generation++) {
      const packed = writePack(dir, `whole-${generation}.pack`, { ...delta(generation, 10), remove: [], whole: true });
      state = applyDelta(state, readPack(packed)).state;
      unlinkSync(packed.file);
      files.push(packed.file);
      expect(state.certificates.get('n3')?.chainPem).toContain('chain 3');
    }
    expect(await openAfterGc(files.slice(0, 2)), 'earlier packs still open').toEqual([]);
    // The current state's pack stays open: it is read on demand.
    expect(openFiles()).toContain(`${files[2]} (deleted)`);
    expect(state.generation).toBe(3);
  });
});
