/**
 * The key server's validated config file in its resolved form: every omitted
 * value from KEYSERVER_DEFAULTS, every path absolute (the socket and the
 * embedded PIN file under the state directory, the rest relative to the
 * config file's directory), so later code never looks up a default.
 */
import path from 'node:path';
import type { ConfigOrigin } from './load-json.js';
import { KEYSERVER_DEFAULTS, type KeyserverConfig, type KeyserverFile } from './schema.js';
import { definedOnly } from './schema-kit.js';

function resolveKeys(keys: '*' | readonly string[]): '*' | readonly string[] {
  return keys === '*' ? '*' : [...keys];
}

export function resolveKeyserver(c: KeyserverFile, { source, baseDir }: ConfigOrigin): KeyserverConfig {
  const D = KEYSERVER_DEFAULTS;
  const fromConfigDir = (p: string) => path.resolve(baseDir, p);
  const stateDir = fromConfigDir(c.stateDir ?? D.stateDir);
  const module = c.pkcs11?.module ?? D.pkcs11.module;
  const pin = c.pkcs11?.pin;

  const unixIn = c.listen?.unix === undefined ? {} : c.listen.unix;
  const tcpIn = c.listen?.tcp ?? D.listen.tcp;
  const adminIn = c.admin === undefined ? {} : c.admin;

  return {
    source,
    stateDir,
    pkcs11: {
      module,
      token: c.pkcs11?.token ?? { ...D.pkcs11.token },
      // The schema demands a pin for any module but the embedded one, so
      // the default below only ever applies to the embedded token.
      pin: pin === undefined ? { file: path.resolve(stateDir, D.pkcs11.embeddedPinFile) } : 'env' in pin ? { env: pin.env } : { file: fromConfigDir(pin.file) },
      sessions: c.pkcs11?.sessions ?? D.pkcs11.sessions,
    },
    listen: {
      unix:
        unixIn === null
          ? null
          : {
              // The socket lives with the rest of the key server's state.
              path: path.resolve(stateDir, unixIn.path ?? D.listen.unix.path),
              mode: Number.parseInt(unixIn.mode ?? D.listen.unix.mode, 8),
              keys: resolveKeys(unixIn.keys ?? D.listen.unix.keys),
            },
      tcp:
        tcpIn === null
          ? null
          : {
              host: tcpIn.host ?? D.listen.tcpHost,
              port: tcpIn.port ?? D.listen.tcpPort,
              cert: fromConfigDir(tcpIn.cert),
              key: fromConfigDir(tcpIn.key),
              clientCa: fromConfigDir(tcpIn.clientCa),
            },
    },
    clients: (c.clients ?? D.clients).map((client) => ({
      name: client.name,
      match: Object.fromEntries(Object.entries(client.match).filter(([, v]) => v !== undefined)),
      keys: resolveKeys(client.keys),
    })),
    limits: { ...D.limits, ...definedOnly(c.limits ?? {}) },
    admin: adminIn === null ? null : { host: adminIn.host ?? D.admin.host, port: adminIn.port ?? D.admin.port },
    log: { ...D.log, ...definedOnly(c.log ?? {}) },
  };
}
