import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateStore } from '../proxy/certs/store.js';
import { PID_SPACE } from '../proxy/certs/store-files.js';
import { STALE_SIDE_FILE_MS, sweepLeftovers } from '../proxy/certs/store-leftovers.js';
import { lockEntry, STALE_LOCK_MS } from '../proxy/certs/store-lock.js';
import { StoreConflictError } from '../proxy/store/storage.js';
import { removeDir, tempDir } from './helpers/basics.js';

// The store entry's write lock (certs/store-lock.ts) as another writer leaves it: held by a writer still running (a
// write waits, then is refused, nothing written), or left by one killed midway (taken over at once when its pid is
// gone in this pid space, or once it is STALE_LOCK_MS old when its pid cannot be looked up here). No key server:
// the store writes what its caller validated.

let dir: string;
let store: CertificateStore;
let running: ChildProcess;
const CHAIN = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
const lock = (): string => join(dir, '.site.lock');

beforeAll(() => {
  dir = tempDir('keyedge-store-lock-');
  store = new CertificateStore(dir);
  // A writer still running: a process that lives for the whole file.
  running = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 120000)'], { stdio: 'ignore' });
});

afterAll(() => {
  running.kill();
  removeDir(dir);
});

describe("a store entry's write lock", () => {
  it("a running writer's lock: the write waits, then is refused (KEYEDGE_ERR_STORE_CONFLICT), and nothing is written", () => {
    writeFileSync(lock(), `${running.pid} ${PID_SPACE}\n`);
    const started = Date.now();
    let refused: unknown;
    try {
      store.write('site', CHAIN, { names: ['site.test'] });
    } catch (err) {
      refused = err;
    }
    expect(refused).toBeInstanceOf(StoreConflictError);
    expect((refused as StoreConflictError).code).toBe('KEYEDGE_ERR_STORE_CONFLICT');
    expect((refused as Error).message).toContain(`(pid ${running.pid})`);
    // It waited for the other write a moment (two fsyncs) before giving up.
    expect(Date.now() - started).toBeGreaterThanOrEqual(400);
    expect(existsSync(join(dir, 'site.pem'))).toBe(false);
    expect(existsSync(join(dir, 'site.json'))).toBe(false);
    // The other writer's lock is left alone.
    expect(readFileSync(lock(), 'utf8')).toBe(`${running.pid} ${PID_SPACE}\n`);
  });

  it("a killed writer's lock (its pid gone, in this pid space): taken over, the write done, no lock left", () => {
    const dead = spawnSync(process.execPath, ['-e', '']).pid!;
    writeFileSync(lock(), `${dead} ${PID_SPACE}\n`);
    store.write('site', CHAIN, { names: ['site.test'] });
    expect(readFileSync(join(dir, 'site.pem'), 'utf8')).toBe(CHAIN);
    expect(readdirSync(dir).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it("another pid space's lock: waited for while young, taken over once STALE_LOCK_MS old", () => {
    writeFileSync(lock(), `${running.pid} 00000000\n`);
    expect(() => store.remove('site')).toThrow(StoreConflictError);
    expect(existsSync(join(dir, 'site.pem'))).toBe(true);
    const old = new Date(Date.now() - STALE_LOCK_MS - 1_000);
    utimesSync(lock(), old, old);
    store.remove('site');
    expect(existsSync(join(dir, 'site.pem'))).toBe(false);
    expect(readdirSync(dir).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it('a write whose entry changed since its version was read is refused, nothing written', () => {
    store.write('site', CHAIN, { names: ['site.test'] });
    const read = store.version('site');
    expect(read).not.toBe(0);
    store.write('site', CHAIN, { names: ['site.test', 'www.site.test'] });
    expect(() => store.write('site', CHAIN, { names: ['site.test'] }, read)).toThrow(StoreConflictError);
    expect(JSON.parse(readFileSync(join(dir, 'site.json'), 'utf8')).names).toEqual(['site.test', 'www.site.test']);
    // Absent is version 0: an add conditional on absence is refused once another writer added it.
    expect(() => store.write('site', CHAIN, { names: ['site.test'] }, 0)).toThrow(StoreConflictError);
    store.write('site', CHAIN, { names: ['site.test'] }, store.version('site'));
  });
});

describe("a store entry's write lock taken over from a writer stalled past STALE_LOCK_MS", () => {
  it("the stalled writer's release leaves the new holder's lock alone, though the file system gave it the same inode", async () => {
    const at = tempDir('keyedge-store-lock-abA-');
    const file = join(at, '.site.lock');
    // A writer in its own process that takes the lock, then releases it when told (as a write stalled on a slow disk).
    const lockModule = new URL('../dist/proxy/certs/store-lock.js', import.meta.url).href;
    const stalled = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `const { lockEntry } = await import(${JSON.stringify(lockModule)});
         const release = lockEntry(${JSON.stringify(at)}, ${JSON.stringify(at)}, 'site');
         process.stdout.write('locked\\n');
         process.stdin.once('data', () => { release(); process.stdout.write('released\\n'); process.exit(0); });`,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    try {
      const said = (word: string): Promise<void> =>
        new Promise((resolve) => {
          const onData = (chunk: Buffer): void => {
            if (chunk.toString().includes(word)) {
              stalled.stdout!.off('data', onData);
              resolve();
            }
          };
          stalled.stdout!.on('data', onData);
        });
      await said('locked');
      // Its lock is older than STALE_LOCK_MS: another writer takes it over (store-lock.ts).
      const old = new Date(Date.now() - STALE_LOCK_MS - 1_000);
      utimesSync(file, old, old);
      const release = lockEntry(at, at, 'site');
      const mine = readFileSync(file, 'utf8');
      const releasedBy = said('released');
      stalled.stdin!.write('go\n');
      await releasedBy;
      // The new holder's lock is still there: another writer would otherwise write beside it.
      expect(existsSync(file) && readFileSync(file, 'utf8') === mine).toBe(true);
      release();
      expect(existsSync(file)).toBe(false);
    } finally {
      stalled.kill();
      removeDir(at);
    }
  });
});

describe("a FIFO in a store entry's lock file's place", () => {
  // The lock found taken, its holder was read with readFileSync: a FIFO there held open(2) until a writer came, with
  // the thread of the writer (the primary's event loop for an upload or an ACME renewal). It is refused unread now
  // (config/setting-file.ts), the write refused naming the file, nothing written.
  it.each([
    ['.site.lock', 'the lock'],
    ['.site.lock.break', 'the takeover guard beside a stale lock'],
  ])(
    'at %s (%s): the write is refused at once, naming it, and nothing is written',
    (fifoName) => {
      const at = tempDir('keyedge-store-lock-fifo-');
      try {
        execFileSync('mkfifo', [join(at, fifoName)]);
        if (fifoName.endsWith('.break')) {
          // A lock left by another pid space's writer long ago: stale, so its takeover looks at the guard.
          writeFileSync(join(at, '.site.lock'), `1 00000000\n`);
          const old = new Date(Date.now() - STALE_LOCK_MS - 1_000);
          utimesSync(join(at, '.site.lock'), old, old);
        }
        const storeModule = new URL('../dist/proxy/certs/store.js', import.meta.url).href;
        // In a process of its own: a read that blocks would hold this one's thread for ever; it is ended after 10 s.
        const writer = spawnSync(
          process.execPath,
          [
            '--input-type=module',
            '-e',
            `const { CertificateStore } = await import(${JSON.stringify(storeModule)});
           try {
             new CertificateStore(${JSON.stringify(at)}).write('site', ${JSON.stringify(CHAIN)}, { names: ['site.test'] });
             console.log(JSON.stringify({ written: true }));
           } catch (err) {
             console.log(JSON.stringify({ code: err.code, message: err.message }));
           }`,
          ],
          { encoding: 'utf8', timeout: 10_000 },
        );
        const said = writer.stdout.trim() === '' ? undefined : (JSON.parse(writer.stdout) as { code?: string; message?: string });
        expect({ signal: writer.signal, code: said?.code, stderr: writer.stderr }).toEqual({ signal: null, code: 'KEYEDGE_ERR_CERT_STORE', stderr: '' });
        expect(said?.message).toContain(`cannot lock 'site' in the certificate store ${at}: its lock file ${join(at, fifoName)} is not a regular file`);
        expect(existsSync(join(at, 'site.pem'))).toBe(false);
      } finally {
        removeDir(at);
      }
    },
    20_000,
  );
});

describe("another pid space's leftover side files", () => {
  // A writer of another pid space (a container sharing the volume, the previous boot: its boot id differs) cannot be
  // looked up by its pid: its temp file and `.aside` link, left by a crash, went only to a sweep in its own pid space,
  // which a previous boot never has again.
  it('are kept while young (a write may be under way), removed by the sweep once STALE_LOCK_MS old', () => {
    const at = tempDir('keyedge-store-leftovers-');
    try {
      const foreign = ['.a.pem.999999.deadbeef.0123456789ab.tmp', '.a.json.1.deadbeef.0123456789ab.aside'];
      for (const file of foreign) writeFileSync(join(at, file), 'x');
      expect(sweepLeftovers(at, 'a')).toEqual([]);
      expect(readdirSync(at).sort()).toEqual([...foreign].sort());
      // A minute on (the sweep's clock: a file's ctime cannot be set back); another entry's sweep leaves them.
      expect(sweepLeftovers(at, 'b', Date.now() + STALE_LOCK_MS + 1_000)).toEqual([]);
      expect(sweepLeftovers(at, undefined, Date.now() + STALE_LOCK_MS + 1_000).sort()).toEqual([...foreign].sort());
      expect(readdirSync(at)).toEqual([]);
      // No write of theirs can be under way once their writer's lock would be taken over.
      expect(STALE_SIDE_FILE_MS).toBe(STALE_LOCK_MS);
    } finally {
      removeDir(at);
    }
  });
});
