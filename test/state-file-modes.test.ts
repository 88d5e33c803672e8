import { lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createCa, issue } from './helpers/pki.js';
import { defaultIssuerPool } from '../proxy/certs/validate.js';
import { VERDICT_FILE, VerdictCache } from '../proxy/certs/verdict-cache.js';
import { judgeCertificate, verdictContext } from '../proxy/certs/verdicts.js';
import { writeCache } from '../proxy/store/cache.js';
import { loadProxyConfig } from '../config/load.js';
import { workerConfigEnv } from '../proxy/cluster-worker-config.js';
import { StateFile } from '../proxy/acme/state.js';

// What the proxy writes in its state directory is its owner's alone (files 0600, directories 0700), as the ACME
// state, the worker config, served.log and the serving packs are: the verdict cache and the fleet cache were written
// 0644 (the certificate store's mode), and with a state directory the operator made 0755 any local user read the
// names served, their key ids, and a fleet's routes and origins.
const dir = mkdtempSync(join(tmpdir(), 'keyedge-state-modes-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const mode = (path: string): string => (statSync(path).mode & 0o777).toString(8);

describe('state files', () => {
  it('the fleet cache is 0600, in a state directory it makes 0700', () => {
    const file = join(dir, 'fleet', 'fleet-cache.json');
    writeCache(file, { prefix: '/k/', revision: 7, entries: { '/k/routes/a.test': { value: '{}', modRevision: 7 } } });
    expect(mode(file)).toBe('600');
    expect(mode(join(dir, 'fleet'))).toBe('700');
  });

  it('the verdict cache is 0600', async () => {
    const root = await createCa('Modes Root');
    const leaf = await issue(root, { commonName: 'm.example', dnsNames: ['m.example'], keyAlgorithm: 'ec-p256' });
    const cache = new VerdictCache({ file: join(dir, VERDICT_FILE), warn: () => undefined });
    cache.useContext(verdictContext(defaultIssuerPool().fingerprint));
    const chainText = `${leaf.certPem}\n${root.certPem}`;
    await judgeCertificate({ name: 'm', chainText, source: 'm.pem' }, 'store:m', { now: new Date(), keyserverSpki: async (_id, spki) => spki }, cache);
    cache.flush();
    expect(mode(join(dir, VERDICT_FILE))).toBe('600');
  });

  // The primary writes the running configuration for a worker to a tmp file, then renames it: a tmp file left by a
  // run cut between the two (or put there) kept its mode, 0644, as writeFileSync's mode applies only to a file it
  // creates, and the configuration (an on-demand `ask` URL's credentials among it) went out readable by others.
  it('the worker config is written 0600 over a leftover tmp file of another mode, never through a link there', () => {
    const stateDir = join(dir, 'worker-config');
    mkdirSync(stateDir, { mode: 0o700 });
    const config = loadProxyConfig(undefined, { stateDir });
    const warnings: string[] = [];
    // Each fork's file is named for the primary and the fork (worker-config-PID-RANDOM-N.json): the next one's name follows.
    const first = workerConfigEnv(config, (message) => warnings.push(message)).KEYEDGE_WORKER_CONFIG!;
    expect(first).toMatch(new RegExp(`/worker-config-${process.pid}-[0-9a-f]{8}-\\d+\\.json$`));
    const next = (n: number): string => first.replace(/-(\d+)\.json$/, (_m, k: string) => `-${Number(k) + n}.json`);
    const tmp = `${next(1)}.tmp`;
    writeFileSync(tmp, 'left over', { mode: 0o644 });
    const env = workerConfigEnv(config, (message) => warnings.push(message));
    const file = next(1);
    expect({ env, warnings, mode: mode(file) }).toEqual({ env: { KEYEDGE_WORKER_CONFIG: file }, warnings: [], mode: '600' });
    // A link in the tmp file's place: the write replaces it, and the file it pointed to is left as it was.
    const elsewhere = join(dir, 'not-the-state-dir.txt');
    writeFileSync(elsewhere, 'untouched', { mode: 0o644 });
    symlinkSync(elsewhere, `${next(2)}.tmp`);
    workerConfigEnv(config, (message) => warnings.push(message));
    expect({ warnings, mode: mode(next(2)), elsewhere: readFileSync(elsewhere, 'utf8') }).toEqual({ warnings: [], mode: '600', elsewhere: 'untouched' });
  });

  // The ACME state (the account's key id and URL, every managed name) went to `state.json.<pid>.tmp`, then renamed: a
  // tmp file of that name left over (a run stopped between the two; in a container the pid is the same at each start)
  // kept its 0644, and a link there was written through, the state going to wherever it pointed.
  it('the ACME state is written 0600 over a leftover tmp file of its old name, never through a link there', () => {
    const stateDir = join(dir, 'acme-state');
    const store = new StateFile(stateDir);
    const tmp = join(stateDir, 'acme', `state.json.${process.pid}.tmp`);
    const file = join(stateDir, 'acme', 'state.json');
    writeFileSync(tmp, 'left over', { mode: 0o644 });
    store.state.certificates['a.test'] = { domains: ['a.test'], keyId: 'k1', failures: 0 };
    store.save();
    expect(mode(file)).toBe('600');
    rmSync(tmp);
    const elsewhere = join(dir, 'not-the-acme-dir.txt');
    writeFileSync(elsewhere, 'untouched', { mode: 0o644 });
    symlinkSync(elsewhere, tmp);
    store.save();
    expect({ link: lstatSync(file).isSymbolicLink(), mode: mode(file), elsewhere: readFileSync(elsewhere, 'utf8') }).toEqual({
      link: false,
      mode: '600',
      elsewhere: 'untouched',
    });
    expect(new StateFile(stateDir).state.certificates['a.test']?.keyId).toBe('k1');
  });
});
