/**
 * The fleet store's parts on a real etcd (helpers/etcd.ts; one member unless asked), for a
 * test file: etcd clients and store mirrors made on it, their cache files
 * under its temp dir, all closed by `close()`. `etcdStoresForFile` is the
 * whole fixture: the member started before the file's tests, everything on
 * it closed after them.
 */
import { join } from 'node:path';
import type { Etcd3 } from 'etcd3';
import { afterAll, beforeAll } from 'vitest';
import { PROXY_DEFAULTS } from '../../config/proxy-schema.js';
import { createLogger, type Logger } from '../../keyserver/shared/log.js';
import { CACHE_FILE } from '../../proxy/store/cache.js';
import { etcdClient } from '../../proxy/store/etcd-client.js';
import { EtcdStore, type StoreChange } from '../../proxy/store/etcd-store.js';
import { type EtcdCluster, startEtcdCluster } from './etcd.js';
import { removeDir, tempDir } from './basics.js';

export class EtcdStores {
  readonly log;
  readonly #clients: Etcd3[] = [];
  readonly #stores: EtcdStore[] = [];

  private constructor(
    readonly dir: string,
    readonly etcd: EtcdCluster,
    /** The clients' namespace (etcdClient's `prefix`). */
    readonly clientPrefix: string,
    readonly timeoutMs: number,
  ) {
    this.log = createLogger('etcd-stores-test', 'silent', process.stderr);
  }

  /** `members`: the cluster's size (one unless a test is about quorum or a member lost among others). */
  static async start(clientPrefix: string, timeoutMs: number, members = 1): Promise<EtcdStores> {
    const dir = tempDir('keyedge-etcd-stores-');
    return new EtcdStores(dir, await startEtcdCluster(dir, members), clientPrefix, timeoutMs);
  }

  /** An etcd client as the fleet makes it (etcd-client.ts); `timeoutMs`: its calls' deadline (default: the file's). */
  client(timeoutMs = this.timeoutMs): Etcd3 {
    const { maxRequestBytes } = PROXY_DEFAULTS.etcdSettings;
    const made = etcdClient({ endpoints: this.etcd.endpoints, prefix: this.clientPrefix, tls: null, auth: null, timeoutMs, maxRequestBytes }, 'test');
    this.#clients.push(made);
    return made;
  }

  /**
   * A started mirror of `prefix` on a client of its own, its cache in `name`/ under the temp dir; `changes` collects what
   * it reports. `maxRequestBytes`: the config's `etcd.maxRequestBytes` (default: the defaults table's); `log`: the
   * store's (default: silent).
   */
  async store(
    prefix: string,
    name: string,
    changes: StoreChange[] = [],
    client: Etcd3 = this.client(),
    options: { readonly maxRequestBytes?: number; readonly log?: Logger } = {},
  ): Promise<EtcdStore> {
    const made = new EtcdStore(client, {
      prefix,
      timeoutMs: this.timeoutMs,
      maxRequestBytes: options.maxRequestBytes ?? PROXY_DEFAULTS.etcdSettings.maxRequestBytes,
      cacheFile: join(this.dir, name, CACHE_FILE),
      log: options.log ?? this.log,
      onChange: (c) => changes.push(...c),
    });
    this.#stores.push(made);
    await made.start();
    return made;
  }

  async close(): Promise<void> {
    await Promise.all(this.#stores.map((s) => s.close()));
    for (const c of this.#clients) c.close();
    await this.etcd.close();
    removeDir(this.dir);
  }
}

/** Registers the calling test file's etcd member (started before its tests, closed after them); the getter is valid inside tests. */
export function etcdStoresForFile(clientPrefix: string, timeoutMs: number, members = 1): () => EtcdStores {
  let lab: EtcdStores | undefined;
  beforeAll(async () => {
    lab = await EtcdStores.start(clientPrefix, timeoutMs, members);
  }, 60_000);
  afterAll(async () => {
    await lab?.close();
  });
  return () => {
    if (lab === undefined) throw new Error('the etcd member is not started (used outside a test?)');
    return lab;
  };
}
