import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dueExpiryWarnings } from '../proxy/serving/expiry.js';
import type { CertificateRecord } from '../proxy/serving/spec.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

const DAY_S = 86_400;
const DAYS = { soon: 2, month: 10, later: 60 } as const;
let lab: KeylessLab;
let proxy: ClusterProxy;
const serials: Record<string, string> = {};

beforeAll(async () => {
  lab = await startKeylessLab();
  const storeFiles: [string, string][] = [];
  for (const [name, days] of Object.entries(DAYS)) {
    const issued = await lab.certificate(name, lab.keys.ec, [`${name}.lab.test`], { notAfter: new Date(Date.now() + days * DAY_S * 1000) });
    serials[name] = issued.leaf.cert.serialNumber;
    storeFiles.push([name, `${issued.leaf.certPem}\n${lab.ca.certPem}`]);
  }
  proxy = await startClusterProxy(lab, 'expiry', (p) => {
    // The store is filled before the proxy starts: the start loads it.
    for (const [name, pem] of storeFiles) writeFileSync(join(p.storeDir, `${name}.pem`), pem);
    return storeProxyConfig(lab, p, { workers: 1 });
  });
}, 90_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
});

describe('certificate expiry', () => {
  it('exports seconds until expiry per entry and the 7/30-day aggregates', async () => {
    const text = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
    for (const [name, days] of Object.entries(DAYS)) {
      const value = Number(new RegExp(`^keyedge_proxy_certificate_expiry_seconds\\{certificate="${name}"\\} (-?\\d+)$`, 'm').exec(text)?.[1]);
      // Issued moments ago for `days` days: within a minute of it.
      expect(Math.abs(value - days * DAY_S), name).toBeLessThan(120);
    }
    expect(text).toMatch(/^keyedge_proxy_certificates_expiring\{within="7d"\} 1$/m);
    expect(text).toMatch(/^keyedge_proxy_certificates_expiring\{within="30d"\} 2$/m);
  });

  it('lists every entry with serial, issuer, notAfter, key id and load time at GET /certs', async () => {
    const listed = JSON.parse((await proxy.admin('GET', '/certs', undefined, null)).text) as { certificates: Record<string, unknown>[]; refused: unknown[] };
    expect(listed.refused).toEqual([]);
    expect(listed.certificates.map((c) => c.name).sort()).toEqual(['later', 'month', 'soon']);
    for (const entry of listed.certificates) {
      const name = entry.name as keyof typeof DAYS;
      expect(entry).toMatchObject({ from: 'store', serial: serials[name], keyId: lab.keys.ec.keyId, names: [`${name}.lab.test`], issuer: 'CN=keyedge lab CA' });
      expect(Math.abs(Date.parse(entry.notAfter as string) - Date.now() - DAYS[name] * DAY_S * 1000)).toBeLessThan(120_000);
      expect(Date.now() - Date.parse(entry.loadedAt as string)).toBeLessThan(120_000);
    }
  });

  it('logs a warning for the certificates within 30 days, at the tightest threshold crossed', () => {
    const warnings = proxy.lines.filter((l) => typeof l.msg === 'string' && (l.msg as string).startsWith('certificate expires within'));
    expect(warnings.map((l) => [l.certificate, l.withinDays]).sort()).toEqual([
      ['month', 14],
      ['soon', 7],
    ]);
  });
});

describe('dueExpiryWarnings', () => {
  const record = (name: string, daysLeft: number, serial = '01'): CertificateRecord =>
    ({ name, serial, notAfter: new Date(Date.UTC(2026, 0, 1) + daysLeft * DAY_S * 1000).toISOString() }) as CertificateRecord;
  const now = new Date(Date.UTC(2026, 0, 1));

  it('warns once per threshold as expiry approaches, and again for a renewed certificate', () => {
    const warned = new Map<string, number>();
    expect(dueExpiryWarnings([record('a', 45)], now, warned)).toEqual([]);
    expect(dueExpiryWarnings([record('a', 29)], now, warned).map((w) => w.days)).toEqual([30]);
    expect(dueExpiryWarnings([record('a', 29)], now, warned)).toEqual([]);
    expect(dueExpiryWarnings([record('a', 13)], now, warned).map((w) => w.days)).toEqual([14]);
    expect(dueExpiryWarnings([record('a', 0.5)], now, warned).map((w) => w.days)).toEqual([1]);
    expect(dueExpiryWarnings([record('a', -1)], now, warned)).toEqual([]);
    // Renewed (new serial) but still short-lived: warned anew.
    expect(dueExpiryWarnings([record('a', 6, '02')], now, warned).map((w) => w.days)).toEqual([7]);
  });
});
