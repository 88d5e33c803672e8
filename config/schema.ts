/**
 * The key server's configuration: the shape of its JSON file (validated once,
 * at start) and the one table of defaults. The file schema holds no defaults:
 * every omitted value is filled from KEYSERVER_DEFAULTS by
 * config/resolve-keyserver.ts, so a default can be read, changed and
 * justified in a single place.
 *
 * Messages say what was expected and never echo a value that could be secret:
 * the PIN must never reach a log through a config error.
 */

import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { intIn, isObject, KEY_ID, KEYS_EXPECTED, keyId, port, SHA256_HEX, strict, text } from './schema-kit.js';

/** The resolved configuration; all paths are absolute. */
export interface KeyserverConfig {
  readonly source: string;
  readonly stateDir: string;
  readonly pkcs11: {
    readonly module: 'embedded' | string;
    readonly token: { readonly label: string } | { readonly serial: string };
    readonly pin: { readonly env: string } | { readonly file: string };
    readonly sessions: number;
  };
  readonly listen: {
    readonly unix: { readonly path: string; readonly mode: number; readonly keys: '*' | readonly string[] } | null;
    readonly tcp: {
      readonly host: string;
      readonly port: number;
      readonly cert: string;
      readonly key: string;
      readonly clientCa: string;
    } | null;
  };
  readonly clients: readonly {
    readonly name: string;
    readonly match: {
      readonly commonName?: string;
      readonly dnsName?: string;
      readonly uri?: string;
      readonly spkiSha256?: string;
    };
    readonly keys: '*' | readonly string[];
  }[];
  readonly limits: {
    readonly maxBodyBytes: number;
    readonly maxInFlightPerConnection: number;
    readonly maxConnections: number;
    readonly maxConnectionsPerClient: number;
    readonly frameTimeoutMs: number;
    readonly tlsHandshakeTimeoutMs: number;
    readonly requestTimeoutMs: number;
    readonly shutdownGraceMs: number;
    readonly tokenStallExitMs: number;
  };
  readonly admin: { readonly host: string; readonly port: number } | null;
  readonly log: {
    readonly level: string;
    readonly keyUsageIntervalSeconds: number;
    readonly rateLimitIntervalSeconds: number;
    readonly rateLimitBurst: number;
  };
}

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

// Shared by the schema and the sessions default, which must stay within it.
// Numeric ranges throughout are wide enough for any real deployment and narrow
// enough to catch unit mix-ups (seconds written as milliseconds, and so on).
const SESSIONS_MAX = 256;

export const KEYSERVER_DEFAULTS = Object.freeze({
  // Next to the repository's working copy rather than /var/lib: the embedded
  // default must run without root; production files set an absolute path.
  stateDir: './var',
  pkcs11: Object.freeze({
    // SoftHSM2 created on first run, so a fresh checkout works with no HSM.
    module: 'embedded' as const,
    // The label the embedded set-up gives the token it creates.
    token: Object.freeze({ label: 'keyedge' }),
    // Relative to stateDir: the embedded set-up writes the PIN it generated
    // there (mode 0600), so the operator never has to choose or type one.
    // Only the embedded module has a default PIN; a real HSM's PIN is the
    // operator's to provide.
    embeddedPinFile: 'token/user.pin',
    // Two signing threads per core: a thread waiting on the token's file locks
    // leaves its core to the other (RSA-2048 on 2 cores: 0.74 of the raw rate
    // with 2, 0.80 with 4; bench/README.md); capped at the schema's maximum.
    sessions: Math.min(SESSIONS_MAX, 2 * Math.max(1, os.availableParallelism())),
  }),
  listen: Object.freeze({
    unix: Object.freeze({
      // Relative to stateDir, which is already private to the key server.
      path: 'keyserver.sock',
      // Owner only: whoever can connect can sign with every key listed below.
      mode: '0600',
      // A local socket is guarded by file permissions alone; restricting keys
      // is an opt-in for hosts that share the key server between services.
      keys: '*' as const,
    }),
    // A network listener needs certificates and a client list, which no
    // default can provide: it is off unless configured.
    tcp: null,
    // Used when tcp is given without them. Loopback, so that exposing the
    // key server to a network is always a deliberate choice.
    tcpHost: '127.0.0.1',
    tcpPort: 7443,
  }),
  // Nobody is trusted over TCP until named.
  clients: Object.freeze([] as const),
  limits: Object.freeze({
    // A signing request is a digest or a short TLS 1.3 signed message plus
    // a key id; 16 KiB leaves room for any of them and rejects junk early.
    maxBodyBytes: 16_384,
    // Enough to keep a busy proxy's pipeline full over one connection while
    // bounding the memory one misbehaving client can pin.
    maxInFlightPerConnection: 256,
    // Proxies hold a few long-lived connections each; 1024 leaves ample room
    // and stays below the usual default file-descriptor limit. Over both
    // listeners; at the cap a newcomer evicts a stalled or idle connection.
    maxConnections: 1024,
    // A proxy host holds one bridge connection per worker plus a few short
    // validation ones: 256 covers 64 workers four times over, and keeps one
    // client (all local clients are one identity on the unix socket) from
    // holding more than a quarter of maxConnections.
    maxConnectionsPerClient: 256,
    // Clients write each frame in one go: a frame still incomplete seconds
    // after its first byte is a broken or hostile peer. 5 s is far above any
    // real transfer of a 16 KiB frame and twice the request deadline.
    frameTimeoutMs: 5_000,
    // Node's default (120 s) let stalled handshakes hold sockets for two
    // minutes; a mutual TLS 1.3 handshake on a LAN takes milliseconds.
    tlsHandshakeTimeoutMs: 10_000,
    // A TLS handshake waits on this signature: past 2 s the client has
    // likely given up, and failing fast lets the proxy retry elsewhere.
    requestTimeoutMs: 2_000,
    // Lets in-flight signatures finish on restart; 10 s is well within
    // systemd's default stop timeout (90 s).
    shutdownGraceMs: 10_000,
    // A call into the token that holds the event loop this long, once the key
    // server serves, ends the process for its supervisor to restart it
    // (token/loop-watch.ts). A minute: far past any sign or scan a working
    // token makes (a SoftHSM2 scan of 3,000 keys took 0.7 s on a loaded
    // 2-core machine), and proxies fail over to another key server meanwhile.
    tokenStallExitMs: 60_000,
  }),
  // Loopback: metrics and health are for the local scraper, not the world.
  // 9464 is the conventional Prometheus exporter port.
  admin: Object.freeze({ host: '127.0.0.1', port: 9464 }),
  log: Object.freeze({
    level: 'info' as const,
    // Per-key usage counts once a minute: fine enough to spot misuse,
    // coarse enough not to flood the log on a busy edge.
    keyUsageIntervalSeconds: 60,
    // Lines a client can cause at will (bad frames, connections refused,
    // evicted or timed out) are capped per reason: 10 per 10 s shows what is
    // happening and from whom; the metrics count every event. As the kernel's
    // printk ratelimit (10 per 5 s), at half its rate.
    rateLimitIntervalSeconds: 10,
    rateLimitBurst: 10,
  }),
});

// ---------------------------------------------------------------------------
// Building blocks

const LITERAL_PIN =
  'a literal PIN is not accepted: PINs come from an environment variable { "env": "NAME" } ' +
  'or a file { "file": "path" }, so the config file can be shared and logged';

/** "*" (every key on the token) or an explicit list. */
const keys = z.union(
  [
    z.literal('*'),
    z
      .array(keyId, { error: KEYS_EXPECTED })
      .min(1, { error: `${KEYS_EXPECTED}; use "*" for all keys` })
      .superRefine((ids, ctx) => {
        const first = new Map<string, number>();
        ids.forEach((id, i) => {
          const j = first.get(id);
          if (j === undefined) first.set(id, i);
          else ctx.addIssue({ code: 'custom', path: [i], message: `duplicate key id (same as [${j}]); expected each key once` });
        });
      }),
  ],
  { error: KEYS_EXPECTED },
);

// PKCS#11 pads labels to 32 bytes and serial numbers to 16 in CK_TOKEN_INFO,
// so a longer value could never match a token.
const tokenSchema = strict(
  {
    label: text('a token label')
      .refine((s) => Buffer.byteLength(s) <= 32, {
        error: 'expected a token label of at most 32 bytes (the PKCS#11 limit)',
      })
      .optional(),
    serial: text('a token serial number')
      .refine((s) => Buffer.byteLength(s) <= 16, {
        error: 'expected a token serial number of at most 16 bytes (the PKCS#11 limit)',
      })
      .optional(),
  },
  'an object { "label": "..." } or { "serial": "..." }',
)
  .superRefine((t, ctx) => {
    if (t.label !== undefined && t.serial !== undefined) {
      ctx.addIssue({ code: 'custom', message: 'expected exactly one of "label" or "serial", not both' });
    } else if (t.label === undefined && t.serial === undefined) {
      ctx.addIssue({ code: 'custom', message: 'expected exactly one of "label" or "serial"' });
    }
  })
  .transform((t): { label: string } | { serial: string } => (t.label !== undefined ? { label: t.label } : { serial: t.serial as string }));

const pinShape = {
  env: z
    .string({ error: 'expected an environment variable name' })
    .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, { error: 'expected an environment variable name (letters, digits, _)' })
    .optional(),
  file: text('a file path').optional(),
};
const pinKnown = Object.keys(pinShape).join(', ');
const pinSchema = z
  .strictObject(pinShape, {
    // Anything that looks like an attempt to write the PIN itself gets the
    // reason it is refused, not just "wrong type".
    error: (iss) => {
      if (iss.code === 'unrecognized_keys') {
        return iss.keys.includes('value') ? LITERAL_PIN : `unknown key; expected one of: ${pinKnown}`;
      }
      return typeof iss.input === 'string' || typeof iss.input === 'number' ? LITERAL_PIN : `expected { "env": "NAME" } or { "file": "path" }`;
    },
  })
  .superRefine((p, ctx) => {
    if (p.env !== undefined && p.file !== undefined) {
      ctx.addIssue({ code: 'custom', message: 'expected exactly one of "env" or "file", not both' });
    } else if (p.env === undefined && p.file === undefined) {
      ctx.addIssue({ code: 'custom', message: 'expected exactly one of "env" or "file"' });
    }
  })
  .transform((p): { env: string } | { file: string } => (p.env !== undefined ? { env: p.env } : { file: p.file as string }));

const moduleSchema = z.string({ error: 'expected "embedded" or an absolute path to a PKCS#11 module' }).refine((m) => m === 'embedded' || path.isAbsolute(m), {
  // Relative module paths would depend on the working directory and the
  // dynamic loader's search path: the one thing an HSM set-up must not.
  error: 'expected "embedded" or an absolute path to a PKCS#11 module (.so)',
});

const pkcs11Schema = strict(
  {
    module: moduleSchema.optional(),
    token: tokenSchema.optional(),
    pin: pinSchema.optional(),
    sessions: intIn(1, SESSIONS_MAX).optional(),
  },
  'an object',
);

const unixSchema = strict(
  {
    path: text('a socket path').optional(),
    mode: z
      .string({ error: 'expected an octal mode string like "0600"' })
      .regex(/^0[0-7]{3}$/, { error: 'expected an octal mode string like "0600" (matching ^0[0-7]{3}$)' })
      .optional(),
    keys: keys.optional(),
  },
  'an object, or null to disable the unix socket',
);

const tcpSchema = strict(
  {
    host: text('a host name or address').optional(),
    port: port.optional(),
    cert: text('a PEM certificate path'),
    key: text('a PEM private key path'),
    clientCa: text('a PEM CA bundle path for client certificates'),
  },
  'an object, or null to disable the TCP listener',
);

const matchSchema = strict(
  {
    commonName: text('a certificate subject common name').optional(),
    dnsName: text('a DNS subjectAltName').optional(),
    uri: text('a URI subjectAltName').optional(),
    spkiSha256: z
      .string({ error: SHA256_HEX })
      .regex(KEY_ID, { error: `${SHA256_HEX} of the client certificate's SPKI` })
      .optional(),
  },
  'an object with at least one of commonName, dnsName, uri, spkiSha256',
).superRefine((m, ctx) => {
  // An empty match would admit any certificate the CA ever signed.
  if (m.commonName === undefined && m.dnsName === undefined && m.uri === undefined && m.spkiSha256 === undefined) {
    ctx.addIssue({ code: 'custom', message: 'expected at least one of commonName, dnsName, uri, spkiSha256' });
  }
});

const clientSchema = strict(
  {
    name: text('a client name'),
    match: matchSchema,
    // Required: access to keys over the network is always spelled out.
    keys,
  },
  'an object { "name", "match", "keys" }',
);

const clientsSchema = z.array(clientSchema, { error: 'expected an array of clients' }).superRefine((list, ctx) => {
  // Names appear in logs and metrics; two clients with one name would be
  // indistinguishable there.
  const first = new Map<string, number>();
  list.forEach((c, i) => {
    const j = first.get(c.name);
    if (j === undefined) first.set(c.name, i);
    else ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `duplicate client name (same as clients[${j}].name); expected unique names` });
  });
});

const limitsSchema = strict(
  {
    maxBodyBytes: intIn(64, 1_048_576).optional(),
    maxInFlightPerConnection: intIn(1, 65_536).optional(),
    maxConnections: intIn(1, 100_000).optional(),
    maxConnectionsPerClient: intIn(1, 100_000).optional(),
    frameTimeoutMs: intIn(100, 600_000).optional(),
    tlsHandshakeTimeoutMs: intIn(100, 600_000).optional(),
    requestTimeoutMs: intIn(10, 60_000).optional(),
    shutdownGraceMs: intIn(0, 600_000).optional(),
    tokenStallExitMs: intIn(0, 3_600_000)
      .refine((ms) => ms === 0 || ms >= 1_000, { error: 'expected 0 (never) or from 1000 to 3600000' })
      .optional(),
  },
  'an object',
);

const adminSchema = strict({ host: text('a host name or address').optional(), port: port.optional() }, 'an object, or null to disable the admin listener');

const logSchema = strict(
  {
    level: z.enum(LOG_LEVELS, { error: `expected one of: ${LOG_LEVELS.join(', ')}` }).optional(),
    keyUsageIntervalSeconds: intIn(1, 86_400).optional(),
    rateLimitIntervalSeconds: intIn(1, 3_600).optional(),
    rateLimitBurst: intIn(1, 1_000_000).optional(),
  },
  'an object',
);

// ---------------------------------------------------------------------------
// The file

/**
 * The key server's config file. Every key is optional: what is omitted comes
 * from KEYSERVER_DEFAULTS.
 */
export const keyserverFileSchema = strict(
  {
    stateDir: text('a directory path').optional(),
    pkcs11: pkcs11Schema.optional(),
    listen: strict({ unix: unixSchema.nullable().optional(), tcp: tcpSchema.nullable().optional() }, 'an object { "unix", "tcp" }').optional(),
    clients: clientsSchema.optional(),
    limits: limitsSchema.optional(),
    admin: adminSchema.nullable().optional(),
    log: logSchema.optional(),
  },
  'a JSON object',
).superRefine(
  (cfg: unknown, ctx) => {
    // Rules between sections. They run even when other parts of the file are
    // wrong (`when` below), so that one pass reports every problem; hence the
    // defensive reads: any field here may still hold the raw, invalid input.
    if (!isObject(cfg)) return;
    const pkcs11 = isObject(cfg.pkcs11) ? cfg.pkcs11 : {};
    const listen = isObject(cfg.listen) ? cfg.listen : {};
    const unixOn = listen.unix !== null;
    const tcpOn = listen.tcp !== null && listen.tcp !== undefined;
    const clients = Array.isArray(cfg.clients) ? cfg.clients : [];

    if (typeof pkcs11.module === 'string' && pkcs11.module !== 'embedded' && pkcs11.pin === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['pkcs11', 'pin'],
        message:
          'required when pkcs11.module is not "embedded": expected { "env": "NAME" } or { "file": "path" } ' +
          '(only the embedded token has a PIN the key server generated itself)',
      });
    }
    if (!unixOn && !tcpOn) {
      ctx.addIssue({
        code: 'custom',
        path: ['listen'],
        message: 'expected at least one listener: listen.unix is null and listen.tcp is not configured',
      });
    }
    if (clients.length > 0 && !tcpOn) {
      ctx.addIssue({
        code: 'custom',
        path: ['clients'],
        message: 'clients are matched on the mutual-TLS listener, which is not configured: expected listen.tcp, or no clients',
      });
    }
    if (tcpOn && Array.isArray(cfg.clients ?? []) && clients.length === 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['listen', 'tcp'],
        message: 'no client may use this listener: expected at least one entry in clients',
      });
    }
  },
  { when: () => true },
);

export type KeyserverFile = z.output<typeof keyserverFileSchema>;
