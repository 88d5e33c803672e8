import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readPack, writePack } from '../proxy/serving/pack.js';
import type { CertificateRecord, ServingDelta } from '../proxy/serving/spec.js';
import { applyDelta, EMPTY_STATE } from '../proxy/serving/state.js';
import { selectByName } from '../proxy/tls/names.js';

// A worker's serving state as a pure function of deltas: what a reload swaps in.

function record(name: string, names: string[], serial = '01'): CertificateRecord {
  return {
    name,
    from: 'store',
    source: `/store/${name}.pem`,
    chainPem: '-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n',
    names,
    keyId: 'ab'.repeat(32),
    spki: Buffer.from('spki').toString('base64'),
    serial,
    issuer: 'CN=test',
    notAfter: '2027-01-01T00:00:00.000Z',
    stapled: false,
    loadedAt: '2026-11-22T00:00:00.000Z',
    inputId: `${name}:${serial}`,
  };
}

function delta(generation: number, upsert: CertificateRecord[], remove: string[] = [], sniDefault: string | null = null): ServingDelta {
  return {
    generation,
    routing: {
      domains: [
        {
          name: 'shop.example',
          origins: ['http://127.0.0.1:1'],
          originHost: null,
          originTls: { ca: null, servername: null },
          maxBodyBytes: null,
          hsts: { includeSubDomains: false, preload: false },
        },
      ],
      sni: { default: sniDefault, onUnknown: 'reject' },
    },
    upsert,
    remove,
  };
}

describe('applyDelta', () => {
  it('indexes exact and wildcard names, and the default for clients without SNI', () => {
    const { state, changed } = applyDelta(EMPTY_STATE, delta(1, [record('shop', ['shop.example']), record('wild', ['*.example.net'])], [], 'shop'));
    expect(state.generation).toBe(1);
    expect(changed.map((c) => c.name)).toEqual(['shop', 'wild']);
    expect(selectByName(state.sni, 'shop.example', state.fallback)?.value.name).toBe('shop');
    expect(selectByName(state.sni, 'a.example.net', state.fallback)?.value.name).toBe('wild');
    expect(selectByName(state.sni, 'unknown.example', state.fallback)).toBeUndefined();
    expect(state.noSni?.name).toBe('shop');
    expect(selectByName(state.domains, 'shop.example', undefined)?.value.name).toBe('shop.example');
  });

  it('replaces one certificate and keeps the others as they were', () => {
    const first = applyDelta(EMPTY_STATE, delta(1, [record('shop', ['shop.example']), record('wild', ['*.example.net'])])).state;
    const { state, changed } = applyDelta(first, delta(2, [record('shop', ['shop.example'], '02')]));
    expect(changed.map((c) => c.serial)).toEqual(['02']);
    expect(state.certificates.get('shop')?.serial).toBe('02');
    // Same object: its secure contexts stay cached.
    expect(state.certificates.get('wild')).toBe(first.certificates.get('wild'));
    // The previous state is untouched: a handshake holding it sees one state whole.
    expect(first.certificates.get('shop')?.serial).toBe('01');
  });

  it('removes certificates and their names', () => {
    const first = applyDelta(EMPTY_STATE, delta(1, [record('shop', ['shop.example']), record('wild', ['*.example.net'])])).state;
    const { state, removed } = applyDelta(first, delta(2, [], ['wild']));
    expect(removed).toEqual(['wild']);
    expect(selectByName(state.sni, 'a.example.net', undefined)).toBeUndefined();
    expect(state.records.has('wild')).toBe(false);
  });

  it('reports two certificates claiming one name, first listed keeps it', () => {
    const conflicts: string[] = [];
    const { state } = applyDelta(EMPTY_STATE, delta(1, [record('a', ['shop.example']), record('b', ['shop.example'])]), (name, kept, dropped) =>
      conflicts.push(`${name}:${kept}>${dropped}`),
    );
    expect(conflicts).toEqual(['shop.example:a>b']);
    expect(selectByName(state.sni, 'shop.example', undefined)?.value.name).toBe('a');
  });
});

describe('applyDelta, layered', () => {
  it('takes a change in place of a rebuild, leaving the state before it whole', () => {
    const many = Array.from({ length: 200 }, (_, i) => record(`n${i}`, [`n${i}.example`]));
    const first = applyDelta(EMPTY_STATE, { ...delta(1, many), whole: true }).state;
    const second = applyDelta(first, delta(2, [record('n7', ['n7.example', 'extra.example'], '02')], ['n8'])).state;
    expect(second.layers.certificates.base).toBe(first.layers.certificates.base);
    expect(selectByName(second.sni, 'extra.example', undefined)?.value.serial).toBe('02');
    expect(selectByName(second.sni, 'n7.example', undefined)?.value.serial).toBe('02');
    expect(selectByName(second.sni, 'n8.example', undefined)).toBeUndefined();
    expect(second.certificates.size).toBe(199);
    expect(selectByName(first.sni, 'n8.example', undefined)?.value.name).toBe('n8');
    expect(selectByName(first.sni, 'extra.example', undefined)).toBeUndefined();
  });

  it('rebuilds in order when a change touches a name two certificates claim: the first listed keeps it', () => {
    const conflicts: string[] = [];
    const first = applyDelta(EMPTY_STATE, { ...delta(1, [record('a', ['shop.example']), record('b', ['shop.example'])]), whole: true }, (n) =>
      conflicts.push(n),
    ).state;
    expect(conflicts).toEqual(['shop.example']);
    // 'a' gives the name up: 'b', listed after it, serves it now.
    const second = applyDelta(first, delta(2, [record('a', ['other.example'], '02')])).state;
    expect(selectByName(second.sni, 'shop.example', undefined)?.value.name).toBe('b');
    expect(selectByName(second.sni, 'other.example', undefined)?.value.name).toBe('a');
  });

  it('serves a pack whole state from its table, and changes on top of it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyedge-serving-state-'));
    try {
      const many = Array.from({ length: 300 }, (_, i) => record(`n${i}`, [i === 5 ? '*.wild.example' : `n${i}.example`]));
      const packed = readPack(writePack(dir, 'whole.pack', { ...delta(1, many, [], 'n1'), whole: true }));
      const { state, rebased } = applyDelta(EMPTY_STATE, packed);
      expect(rebased).toBe(true);
      expect(state.certificates.size).toBe(300);
      expect(selectByName(state.sni, 'n9.example', undefined)?.value.name).toBe('n9');
      expect(selectByName(state.sni, 'x.wild.example', undefined)?.value.name).toBe('n5');
      expect(state.noSni?.name).toBe('n1');
      expect(state.certificates.get('n9')?.chainPem).toBe(many[9]!.chainPem);
      const next = applyDelta(state, delta(2, [record('n9', ['n9.example'], '02')], ['n10'])).state;
      expect(selectByName(next.sni, 'n9.example', undefined)?.value.serial).toBe('02');
      expect(selectByName(next.sni, 'n10.example', undefined)).toBeUndefined();
      expect(selectByName(state.sni, 'n10.example', undefined)?.value.name).toBe('n10');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
