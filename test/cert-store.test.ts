import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateError, CertificateStoreError } from '../proxy/certs/errors.js';
import { CertificateStore } from '../proxy/certs/store.js';
import { directoryId } from '../proxy/certs/store-dir.js';
import { REPO } from './helpers/basics.js';

// The store's file contract: atomic replacement, a listing that ignores
// everything but entries, and refusals that name what is wrong.

let root: string;
let counter = 0;
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'keyedge-cert-store-'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A store whose directory is made (create()): write() makes none. */
function freshStore(): CertificateStore {
  const store = new CertificateStore(join(root, `store-${++counter}`, 'certs'));
  store.create();
  return store;
}

const CHAIN = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n';
const KEY_ID = 'ab'.repeat(32);

function storeError(fn: () => unknown): CertificateStoreError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CertificateStoreError);
    return err as CertificateStoreError;
  }
  throw new Error('expected a CertificateStoreError');
}

describe('certificate store', () => {
  it('makes the directory 0755 (create()), writes 0644 files and leaves no temp file', () => {
    const store = freshStore();
    expect(store.list()).toEqual([]);
    store.write('shop', CHAIN, { names: ['shop.example'], keyId: KEY_ID, addedAt: '2026-11-22T10:00:00.000Z' });
    expect(statSync(store.dir).mode & 0o777).toBe(0o755);
    expect(readdirSync(store.dir).sort()).toEqual(['shop.json', 'shop.pem']);
    for (const file of ['shop.json', 'shop.pem']) expect(statSync(join(store.dir, file)).mode & 0o777).toBe(0o644);
    expect(readFileSync(join(store.dir, 'shop.pem'), 'utf8')).toBe(CHAIN);
    expect(JSON.parse(readFileSync(join(store.dir, 'shop.json'), 'utf8'))).toEqual({
      names: ['shop.example'],
      keyId: KEY_ID,
      addedAt: '2026-11-22T10:00:00.000Z',
    });
    const entry = store.read('shop');
    expect(entry).toMatchObject({
      name: 'shop',
      chainText: CHAIN,
      chainPath: join(store.dir, 'shop.pem'),
      metaPath: join(store.dir, 'shop.json'),
      size: CHAIN.length,
    });
    expect(entry.meta).toEqual({ names: ['shop.example'], keyId: KEY_ID, addedAt: '2026-11-22T10:00:00.000Z' });
    expect(entry.metaMtimeMs).toBeTypeOf('number');
  });

  it('replaces an entry whole and reports the change in mtime/size', () => {
    const store = freshStore();
    store.write('shop', CHAIN, {});
    const before = store.list()[0]!;
    const longer = CHAIN + CHAIN;
    store.write('shop', longer, { replacedAt: new Date().toISOString() });
    const after = store.list()[0]!;
    expect(after.size).toBe(longer.length);
    expect(after.size).not.toBe(before.size);
    expect(store.read('shop').chainText).toBe(longer);
    expect(readdirSync(store.dir).sort()).toEqual(['shop.json', 'shop.pem']);
  });

  it('lists entries by name, ignoring temp files, metadata without a chain and other files', () => {
    const store = freshStore();
    for (const name of ['b', 'a.example', 'c_1']) store.write(name, CHAIN, {});
    writeFileSync(join(store.dir, '.a.example.pem.123.abcd.tmp'), 'partial');
    writeFileSync(join(store.dir, '.hidden.pem'), CHAIN);
    writeFileSync(join(store.dir, 'orphan.json'), '{}');
    writeFileSync(join(store.dir, 'notes.txt'), 'hello');
    writeFileSync(join(store.dir, 'shop.pem~'), CHAIN);
    mkdirSync(join(store.dir, 'dir.pem'));
    expect(store.list().map((e) => e.name)).toEqual(['a.example', 'b', 'c_1']);
  });

  it("follows a symlinked chain (a renewal tool's live file)", () => {
    const store = freshStore();
    store.write('a', CHAIN, {});
    const live = join(root, `live-${counter}.pem`);
    writeFileSync(live, CHAIN + CHAIN);
    symlinkSync(live, join(store.dir, 'linked.pem'));
    symlinkSync(join(root, 'missing.pem'), join(store.dir, 'dangling.pem'));
    expect(store.list().map((e) => [e.name, e.size, e.metaMtimeMs])).toEqual([
      ['a', CHAIN.length, expect.any(Number)],
      ['linked', 2 * CHAIN.length, undefined],
    ]);
    expect(store.read('linked').meta).toEqual({});
  });

  it("writes over no link nor through one (another tool's files), a dangling link too; remove() unlinks the link only", () => {
    const store = freshStore();
    mkdirSync(store.dir, { recursive: true });
    const live = join(root, `owned-${counter}.pem`);
    const managed = join(root, `owned-${counter}.json`);
    writeFileSync(live, CHAIN);
    writeFileSync(managed, '{}\n');
    symlinkSync(live, join(store.dir, 'chain.pem'));
    symlinkSync(join(root, 'missing.pem'), join(store.dir, 'dangling.pem'));
    writeFileSync(join(store.dir, 'meta.pem'), CHAIN);
    symlinkSync(managed, join(store.dir, 'meta.json'));
    for (const [name, file, target] of [
      ['chain', 'chain.pem', live],
      ['dangling', 'dangling.pem', join(root, 'missing.pem')],
      ['meta', 'meta.json', managed],
    ] as const) {
      const err = storeError(() => store.write(name, CHAIN.replace('AAAA', 'BBBB'), { names: ['x.example'] }));
      expect([err.code, err.entry]).toEqual(['KEYEDGE_ERR_CERT_LINKED', name]);
      expect(err.message).toContain(`${join(store.dir, file)} is a symbolic link to ${target}`);
    }
    // Nothing written: the links as they were, their targets unchanged, no metadata or temp file beside them.
    expect(readdirSync(store.dir).sort()).toEqual(['chain.pem', 'dangling.pem', 'meta.json', 'meta.pem']);
    expect([readFileSync(live, 'utf8'), readFileSync(managed, 'utf8'), readFileSync(join(store.dir, 'meta.pem'), 'utf8')]).toEqual([CHAIN, '{}\n', CHAIN]);
    expect(store.read('chain').chainText).toBe(CHAIN);
    store.remove('chain');
    store.remove('meta');
    expect([readFileSync(live, 'utf8'), readFileSync(managed, 'utf8')]).toEqual([CHAIN, '{}\n']);
  });

  it('writes into no directory that is not there, nor into another than the one it was bound to', () => {
    const store = freshStore();
    const away = `${store.dir}.away`;
    renameSync(store.dir, away);
    const gone = storeError(() => store.write('a', CHAIN, {}));
    expect([gone.code, existsSync(store.dir)]).toEqual(['KEYEDGE_ERR_CERT_STORE_GONE', false]);
    renameSync(away, store.dir);
    const bound = new CertificateStore(store.dir, { dirId: directoryId(store.dir)! });
    renameSync(store.dir, away);
    mkdirSync(store.dir);
    const replaced = storeError(() => bound.write('a', CHAIN, {}));
    expect(replaced.code).toBe('KEYEDGE_ERR_CERT_STORE_GONE');
    expect(replaced.message).toContain(`the certificate store ${store.dir} was replaced by another directory`);
    expect([readdirSync(store.dir), readdirSync(away)]).toEqual([[], []]);
  });

  it('tells a symlink re-pointed to a chain of the same size and mtime by its identity (inode, ctime)', () => {
    const store = freshStore();
    const other = CHAIN.replace('AAAA', 'BBBB');
    const [a, b] = [join(root, `same-a-${counter}.pem`), join(root, `same-b-${counter}.pem`)];
    const then = new Date('2026-01-01T00:00:00Z');
    for (const [file, text] of [
      [a, CHAIN],
      [b, other],
    ] as const) {
      writeFileSync(file, text);
      utimesSync(file, then, then);
    }
    mkdirSync(store.dir, { recursive: true });
    symlinkSync(a, join(store.dir, 'x.pem'));
    const before = store.list()[0]!;
    symlinkSync(b, join(store.dir, '.x.tmp'));
    renameSync(join(store.dir, '.x.tmp'), join(store.dir, 'x.pem'));
    const after = store.list()[0]!;
    expect([after.size, after.mtimeMs, after.link]).toEqual([before.size, before.mtimeMs, true]);
    expect(after.statId).not.toBe(before.statId);
    expect(store.list()[0]!.statId).toBe(after.statId);
  });

  it('removes an entry, chain and metadata', () => {
    const store = freshStore();
    store.write('gone', CHAIN, { names: ['gone.example'] });
    store.write('kept', CHAIN, {});
    store.remove('gone');
    expect(readdirSync(store.dir).sort()).toEqual(['kept.json', 'kept.pem']);
    expect(storeError(() => store.remove('gone')).code).toBe('KEYEDGE_ERR_CERT_NOT_FOUND');
    expect(store.has('gone')).toBe(false);
    expect(store.has('kept')).toBe(true);
  });

  it('says an entry is missing, and names the file when it is unreadable', () => {
    const store = freshStore();
    const missing = storeError(() => store.read('nope'));
    expect(missing.code).toBe('KEYEDGE_ERR_CERT_NOT_FOUND');
    expect(missing.message).toContain("no certificate 'nope'");
    store.write('bad', CHAIN, {});
    const metaPath = join(store.dir, 'bad.json');
    for (const [content, expected] of [
      ['{"names": ["shop.example"],', 'the metadata is not valid JSON'],
      ['{"names": ["Shop Example"]}', 'invalid metadata: names[0]: expected a lower-case DNS name'],
      ['{"keyId": "lab-ec"}', 'invalid metadata: keyId: expected a key id'],
      ['{"pin": "1234"}', 'invalid metadata: pin: '],
      ['[]', 'invalid metadata'],
    ] as const) {
      writeFileSync(metaPath, content);
      let error: unknown;
      try {
        store.read('bad');
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(CertificateError);
      expect((error as CertificateError).reason).toBe('parse');
      expect((error as Error).message).toContain(metaPath);
      expect((error as Error).message).toContain(expected);
      expect((error as Error).message).not.toContain('1234');
    }
    mkdirSync(join(store.dir, 'isdir.pem'));
    const notFile = (() => {
      try {
        store.read('isdir');
      } catch (err) {
        return err as CertificateError;
      }
      throw new Error('expected a refusal');
    })();
    expect(notFile).toBeInstanceOf(CertificateError);
    expect(notFile.message).toContain(join(store.dir, 'isdir.pem'));
  });

  it.each(['', '../escape', 'a/b', '.hidden', 'a'.repeat(65), 'name with space', 'ü'])('refuses the entry name %j', (name) => {
    const store = freshStore();
    for (const op of [() => store.write(name, CHAIN, {}), () => store.read(name), () => store.remove(name)]) {
      const err = storeError(op);
      expect(err.code).toBe('KEYEDGE_ERR_CERT_STORE');
      expect(err.message).toContain('is not a certificate name');
    }
    expect(store.list()).toEqual([]);
  });

  it('refuses invalid metadata and writes nothing', () => {
    const store = freshStore();
    const err = storeError(() => store.write('shop', CHAIN, { names: ['*.*.example'] }));
    expect(err.code).toBe('KEYEDGE_ERR_CERT_STORE');
    expect(err.message).toContain('names[0]');
    expect(store.list()).toEqual([]);
  });

  it('puts the metadata back when the chain cannot be written: an entry never keeps metadata pinned for another chain', () => {
    const store = freshStore();
    store.write('kept', CHAIN, { names: ['a.example'], keyId: KEY_ID });
    const before = readFileSync(join(store.dir, 'kept.json'), 'utf8');
    // A directory where the chain goes: its rename fails (EISDIR), after the metadata's.
    rmSync(join(store.dir, 'kept.pem'));
    mkdirSync(join(store.dir, 'kept.pem'));
    mkdirSync(join(store.dir, 'new.pem'));
    for (const name of ['kept', 'new'])
      expect(storeError(() => store.write(name, CHAIN, { names: ['b.example'] })).message).toContain(`cannot write '${name}'`);
    // As they were: the old metadata, and none for an entry that had none; nothing else left behind.
    expect(readFileSync(join(store.dir, 'kept.json'), 'utf8')).toBe(before);
    expect(readdirSync(store.dir).sort()).toEqual(['kept.json', 'kept.pem', 'new.pem']);
  });

  it('a directory fsync that fails once the files are renamed leaves the entry whole: written, replaced or removed, never half', () => {
    const store = freshStore();
    const failDirSync = (code: string) => {
      const { fsyncSync } = fs;
      fs.fsyncSync = (fd: number) => {
        if (fs.fstatSync(fd).isDirectory()) throw Object.assign(new Error(`${code}: fsync`), { code });
        return fsyncSync(fd);
      };
      syncBuiltinESMExports();
      return () => {
        fs.fsyncSync = fsyncSync;
        syncBuiltinESMExports();
      };
    };
    // A file system that cannot sync directories (EINVAL): a write and a removal succeed.
    let restore = failDirSync('EINVAL');
    try {
      store.write('a', CHAIN, { names: ['a.example'] });
      store.write('gone', CHAIN, { names: ['gone.example'] });
      store.remove('gone');
    } finally {
      restore();
    }
    expect(store.read('a').meta.names).toEqual(['a.example']);
    expect(readdirSync(store.dir).sort()).toEqual(['a.json', 'a.pem']);
    // A failing disk (EIO): the change stands, and is no failure (reported as one, ACME took a renewal written whole
    // for one not written, and kept the previous names and key id in its state).
    restore = failDirSync('EIO');
    try {
      store.write('a', CHAIN, { names: ['b.example'], keyId: KEY_ID });
      store.write('new', CHAIN, { names: ['new.example'] });
      store.remove('new');
    } finally {
      restore();
    }
    expect(store.read('a').meta).toMatchObject({ names: ['b.example'], keyId: KEY_ID });
    expect(readdirSync(store.dir).sort()).toEqual(['a.json', 'a.pem']);
  });

  it('never shows a concurrent reader a partial file', async () => {
    const store = freshStore();
    // Large enough that a non-atomic write would be seen half done.
    const versions = ['A', 'B'].map((c) => `${c.repeat(64)}\n`.repeat(8192));
    store.write('big', versions[0]!, { names: ['a.example'] });
    const stop = new Int32Array(new SharedArrayBuffer(4));
    const worker = new Worker(
      `
      const { parentPort, workerData } = require('node:worker_threads');
      (async () => {
        const { CertificateStore } = await import(workerData.storeModule);
        const store = new CertificateStore(workerData.dir);
        let reads = 0, torn = 0, names = new Set();
        for (;;) {
          const entry = store.read('big');
          reads++;
          if (!workerData.versions.includes(entry.chainText)) torn++;
          names.add(entry.meta.names[0]);
          if (reads === 1) parentPort.postMessage({ ready: true });
          if (Atomics.load(workerData.stop, 0) === 1) break;
        }
        parentPort.postMessage({ reads, torn, names: [...names] });
      })();
      `,
      { eval: true, workerData: { storeModule: pathToFileURL(join(REPO, 'dist', 'proxy', 'certs', 'store.js')).href, dir: store.dir, versions, stop } },
    );
    const messages: { ready?: boolean; reads?: number; torn?: number; names?: string[] }[] = [];
    const done = new Promise<{ reads: number; torn: number; names: string[] }>((resolve, reject) => {
      worker.on('message', (m: (typeof messages)[number]) => {
        messages.push(m);
        if (m.reads !== undefined) resolve(m as { reads: number; torn: number; names: string[] });
      });
      worker.on('error', reject);
    });
    await new Promise<void>((resolve) => worker.once('message', () => resolve()));
    for (let i = 0; i < 200; i++) store.write('big', versions[i % 2]!, { names: [i % 2 === 0 ? 'a.example' : 'b.example'] });
    Atomics.store(stop, 0, 1);
    const result = await done;
    await worker.terminate();
    expect(result.reads).toBeGreaterThan(1);
    expect(result.torn).toBe(0);
    expect(readdirSync(store.dir).sort()).toEqual(['big.json', 'big.pem']);
  });
});
