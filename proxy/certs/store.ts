/** Provisional certificate store (replaced by the full store). */
import { mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export interface StoreMeta {
  readonly names?: readonly string[];
  readonly keyId?: string;
  readonly addedAt?: string;
  readonly replacedAt?: string;
}
export interface StoreEntryRef {
  readonly name: string;
  readonly chainPath: string;
  readonly metaPath: string;
  readonly mtimeMs: number;
  readonly size: number;
}
export interface StoreEntry extends StoreEntryRef {
  readonly chainText: string;
  readonly meta: StoreMeta;
}

export class CertificateStore {
  readonly dir: string;
  constructor(dir: string) {
    this.dir = dir;
  }
  list(): StoreEntryRef[] {
    mkdirSync(this.dir, { recursive: true });
    return readdirSync(this.dir)
      .filter((f) => /^[\w.-]{1,64}\.pem$/.test(f))
      .sort()
      .map((f) => {
        const name = f.slice(0, -4);
        const chainPath = path.join(this.dir, f);
        const st = statSync(chainPath);
        return { name, chainPath, metaPath: path.join(this.dir, `${name}.json`), mtimeMs: st.mtimeMs, size: st.size };
      });
  }
  read(name: string): StoreEntry {
    const ref = this.list().find((r) => r.name === name)!;
    let meta: StoreMeta = {};
    try {
      meta = JSON.parse(readFileSync(ref.metaPath, 'utf8')) as StoreMeta;
    } catch {}
    return { ...ref, chainText: readFileSync(ref.chainPath, 'utf8'), meta };
  }
  write(name: string, chainText: string, meta: StoreMeta): void {
    mkdirSync(this.dir, { recursive: true });
    writeFileSync(path.join(this.dir, `.${name}.json.tmp`), JSON.stringify(meta));
    renameSync(path.join(this.dir, `.${name}.json.tmp`), path.join(this.dir, `${name}.json`));
    writeFileSync(path.join(this.dir, `.${name}.pem.tmp`), chainText);
    renameSync(path.join(this.dir, `.${name}.pem.tmp`), path.join(this.dir, `${name}.pem`));
  }
}
