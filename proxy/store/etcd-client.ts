/**
 * An etcd v3 client (npm etcd3) from the proxy's `etcd` settings: endpoints,
 * TLS to etcd (its CA, and the node's client certificate when etcd requires
 * one), etcd's user/password auth with the password read from a file, and a
 * deadline on every unary call so that a partitioned member costs at most
 * `timeoutMs`, never a hang on the reload path; with several members, half
 * of it per try, so that a stalled member's try leaves time for another's. No cap on an answer's size:
 * the whole prefix is read in one. A member whose calls keep failing is
 * skipped while another can answer, never when none can (member-breaker.ts).
 * A lost watch stream is opened again within a second, and at once after
 * the close (watch-backoff.ts): etcd3 waits that long even after its close,
 * holding a stopping process.
 *
 * Read once at start: rotating the client certificate or the password takes
 * a restart (the whole `etcd` key is restart-only).
 */
import { Etcd3, type IOptions } from 'etcd3';
import type { EtcdSettings } from '../../config/proxy-schema.js';
import { readSettingFile } from '../../config/setting-file.js';
import { ConfigError } from '../../keyserver/shared/errors.js';
import { memberBreakers } from './member-breaker.js';
import { WatchBackoffs } from './watch-backoff.js';

/** etcd3's client, whose close also shortens the watch's reconnect waits etcd3 keeps running after it (watch-backoff.ts). */
class FleetEtcd3 extends Etcd3 {
  readonly #watchBackoffs: WatchBackoffs;

  constructor(options: IOptions, watchBackoffs: WatchBackoffs) {
    super(options);
    this.#watchBackoffs = watchBackoffs;
  }

  override close(): void {
    this.#watchBackoffs.close();
    super.close();
  }
}

/**
 * One try's deadline. The store gives a call `timeoutMs` in all (etcd-calls.ts); with several members, each try gets
 * half of it, so that a try sent to a stalled or partitioned member ends in time for etcd3 to send the call again to
 * another member (its global policy: three tries, each on the next member of a shuffled order) before the store
 * gives up. With a try's deadline the call's whole, a probe that etcd3 sent to one stalled member of three failed,
 * and the node said etcd was away and refused changes until the next probe (measured: two such flaps and 1.1 s
 * degraded while a follower was stopped for 20 s), though two members answered in milliseconds; a write sent there
 * failed the same way. The member breaker (member-breaker.ts) still skips a member after three failed tries. With one
 * member no other can answer: its try has the call's whole deadline.
 */
function tryMs(settings: EtcdSettings): number {
  return settings.endpoints.length > 1 ? Math.ceil(settings.timeoutMs / 2) : settings.timeoutMs;
}

/** Far past a password, a certificate, a key or a CA bundle. */
const MAX_ETCD_FILE_BYTES = 1024 * 1024;

export function etcdClient(settings: EtcdSettings, configSource: string): Etcd3 {
  const read = (file: string, key: string): Buffer => {
    try {
      // At start, before the primary serves: still not a FIFO's open(2) waiting for a writer (config/setting-file.ts).
      return readSettingFile(file, MAX_ETCD_FILE_BYTES);
    } catch (err) {
      throw new ConfigError(configSource, key, `cannot read ${file}: ${(err as Error).message}`, { cause: err });
    }
  };
  const tls = settings.tls;
  const password = settings.auth === null ? undefined : read(settings.auth.passwordFile, 'etcd.auth.passwordFile').toString('utf8').trim();
  const watchBackoffs = new WatchBackoffs();
  return new FleetEtcd3(
    {
      hosts: [...settings.endpoints],
      dialTimeout: settings.timeoutMs,
      // The start (and every resync) reads the whole prefix in one answer, and a
      // watch answer carries a whole transaction: gRPC's 4 MiB default refused
      // them past ~1,000 certificates, and the node stayed degraded for ever.
      // The mirror holds all of it in memory anyway.
      grpcOptions: { 'grpc.max_receive_message_length': -1 },
      ...(tls === null
        ? {}
        : {
            credentials: {
              rootCertificate: read(tls.ca, 'etcd.tls.ca'),
              ...(tls.cert === null || tls.key === null ? {} : { certChain: read(tls.cert, 'etcd.tls.cert'), privateKey: read(tls.key, 'etcd.tls.key') }),
            },
          }),
      ...(settings.auth === null || password === undefined ? {} : { auth: { username: settings.auth.username, password } }),
      // Streams (watches) live as long as the store; every other call has a deadline, per try (etcd3 asks for call
      // options again at each of its tries, on the next member each time).
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + tryMs(settings) }),
      // Not etcd3's breaker, which refused every call for up to 5 s after etcd came back.
      // Not etcd3's watch backoff either, whose 30 s timer kept a node stopped while etcd was away alive (watch-backoff.ts).
      faultHandling: { host: memberBreakers(), watchBackoff: watchBackoffs.first() },
    },
    watchBackoffs,
  );
}
