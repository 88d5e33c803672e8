/**
 * The primary's look, at start, at the files of its config that hold a
 * secret: the admin token, the etcd password and client key, the ACME EAB
 * key, the key servers' mutual-TLS client keys. One its group or others may
 * read is named with its mode (keyserver/shared/secret-file.ts), never its
 * content. Only the admin token file was looked at: a 0644 etcd password or
 * EAB key went unremarked. At start only: the token file is read again at
 * each change and may be rotated, the others are read when used.
 */
import type { ProxyConfig } from '../config/proxy-schema.js';
import type { Logger } from '../keyserver/shared/log.js';
import { looseSecretFile } from '../keyserver/shared/secret-file.js';

/** Each secret file of `config`: what it is (for the warning), its config key, its path. */
function secretFiles(config: ProxyConfig): { what: string; key: string; path: string }[] {
  const files: { what: string; key: string; path: string }[] = [];
  const { admin, etcd, acme, keyserver } = config;
  if (admin !== null) files.push({ what: 'the admin token file', key: 'admin.tokenFile', path: admin.tokenFile });
  if (etcd?.auth) files.push({ what: 'the etcd password file', key: 'etcd.auth.passwordFile', path: etcd.auth.passwordFile });
  if (etcd?.tls?.key) files.push({ what: 'the etcd client key file', key: 'etcd.tls.key', path: etcd.tls.key });
  if (acme?.eab) files.push({ what: 'the ACME EAB key file', key: 'acme.eab.hmacKeyFile', path: acme.eab.hmacKeyFile });
  for (const server of keyserver.servers) {
    if (server.tcp !== null) files.push({ what: `key server ${server.name}'s client key file`, key: 'keyserver.tcp.key', path: server.tcp.key });
  }
  return files;
}

/** Warns of each secret file open to its group or others. */
export function warnLooseSecretFiles(config: ProxyConfig, log: Logger): void {
  for (const { what, key, path } of secretFiles(config)) {
    const loose = looseSecretFile(what, path);
    if (loose !== undefined) log.warn({ setting: key }, loose);
  }
}
