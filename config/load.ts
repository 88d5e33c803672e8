/**
 * Loading a daemon's JSON config: read, parse, validate against a schema that
 * rejects unknown keys, apply defaults, resolve paths, deep-freeze. It runs
 * once, at start, so every mistake surfaces before a socket is opened and no
 * code path can see (or change) a half-valid config later.
 *
 * The first half of this file is daemon-neutral (the proxy reuses it with its
 * own schema); the key server's part is at the end.
 */

import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { z } from 'zod';
import { ConfigError } from './errors.js';
import { KEYSERVER_DEFAULTS, keyserverFileSchema, type KeyserverConfig, type KeyserverFile } from './schema.js';
import { definedOnly } from './schema-kit.js';
import {
  type AcmeConfig,
  type domainSchema,
  PROXY_DEFAULTS,
  proxyFileSchema,
  type KeyserverEndpoint,
  type ProxyConfig,
  type ProxyDomain,
  type ProxyFile,
  type TlsProfileName,
} from './proxy-schema.js';

/** `source` of a config built without a file. */
export const DEFAULTS_SOURCE = '(defaults)';

/** Where a config came from: its file (or DEFAULTS_SOURCE) and the directory its relative paths are relative to. */
export interface ConfigOrigin {
  readonly source: string;
  readonly baseDir: string;
}

/** One problem found in a config: dotted key path (`clients[0].keys`, '' for the whole file) and what was expected. */
export interface ConfigProblem {
  readonly path: string;
  readonly message: string;
}

type Issue = z.core.$ZodIssue;
type Segment = PropertyKey;

const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;

export function formatPath(segments: readonly Segment[]): string {
  let out = '';
  for (const s of segments) {
    if (typeof s === 'number') out += `[${s}]`;
    else if (typeof s === 'string' && IDENTIFIER.test(s)) out += out === '' ? s : `.${s}`;
    else out += `[${JSON.stringify(String(s))}]`;
  }
  return out;
}

function valueAt(root: unknown, segments: readonly Segment[]): unknown {
  let v = root;
  for (const s of segments) {
    if (typeof v !== 'object' || v === null || !Object.hasOwn(v, s)) return undefined;
    v = (v as Record<PropertyKey, unknown>)[s];
  }
  return v;
}

/**
 * What was found instead, without ever quoting a string: a string in a config
 * may be a PIN typed where it does not belong, and this text goes to logs.
 */
function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  switch (typeof v) {
    case 'string':
      return 'a string';
    case 'number':
    case 'boolean':
      return String(v);
    case 'object':
      return 'an object';
    default:
      return typeof v;
  }
}

/**
 * A union's issue lists every branch's failures; the useful ones are those of
 * the branch whose type matched (an array of key ids with one bad id, say),
 * since the other branches only say "not a string".
 */
function matchedBranch(issue: Issue & { code: 'invalid_union' }): readonly Issue[] | undefined {
  const typeMatched = issue.errors.filter((branch) => !branch.some((i) => i.path.length === 0 && (i.code === 'invalid_type' || i.code === 'invalid_value')));
  return typeMatched.length === 1 ? typeMatched[0] : undefined;
}

/**
 * Turns schema issues into one problem per offending key, each naming its
 * path and what was expected; unknown keys are reported one by one so each
 * line points at the key to fix. `raw` is the validated input, used to say
 * what was found instead.
 */
export function formatIssues(issues: readonly Issue[], raw: unknown, prefix: readonly Segment[] = []): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  for (const issue of issues) {
    const at = [...prefix, ...issue.path];
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) out.push({ path: formatPath([...at, key]), message: issue.message });
      continue;
    }
    if (issue.code === 'invalid_union') {
      const branch = matchedBranch(issue);
      if (branch) {
        out.push(...formatIssues(branch, raw, at));
        continue;
      }
    }
    const found = valueAt(raw, at);
    let message = issue.message;
    if (found === undefined && issue.code === 'invalid_type') {
      message = `missing; ${message}`;
    } else if (
      // "got" completes an "expected ..." sentence; custom messages (the
      // literal-PIN refusal) stand on their own.
      message.startsWith('expected') &&
      (issue.code === 'invalid_type' ||
        issue.code === 'invalid_union' ||
        ((issue.code === 'too_big' || issue.code === 'too_small') && typeof found === 'number'))
    ) {
      message = `${message}, got ${describe(found)}`;
    }
    out.push({ path: formatPath(at), message });
  }
  return out;
}

/** One ConfigError for all problems: the first on the first line, the others below it, one per line. */
export function configError(source: string, problems: readonly ConfigProblem[], options?: { cause?: unknown }): ConfigError {
  const unique = [...new Map(problems.map((p) => [`${p.path}\0${p.message}`, p])).values()];
  const [first, ...rest] = unique;
  if (!first) return new ConfigError(source, '', 'invalid configuration', options);
  const lines = rest.map((p) => `  ${p.path ? `${p.path}: ` : ''}${p.message}`);
  return new ConfigError(source, first.path, [first.message, ...lines].join('\n'), options);
}

/** Validates `raw` against `schema`; throws one ConfigError listing every problem. */
export function validateConfig<S extends z.ZodType>(schema: S, raw: unknown, source: string): z.output<S> {
  const result = schema.safeParse(raw);
  if (result.success) return result.data;
  throw configError(source, formatIssues(result.error.issues, raw));
}

function lineColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, Math.min(offset, text.length));
  const lastBreak = before.lastIndexOf('\n');
  return { line: before.split('\n').length, column: offset - lastBreak };
}

/** Reads and parses a JSON file; a syntax error names the file and, when V8 gives a position, the line and column. */
export function readJsonConfig(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new ConfigError(file, '', `cannot read the config file (${code})`, { cause: err });
  }
  // Editors on some platforms save UTF-8 with a BOM, which JSON.parse rejects.
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    const position = /at position (\d+)/.exec(reason)?.[1];
    const offset = position !== undefined ? Number(position) : /end of JSON input/.test(reason) ? text.length : undefined;
    // V8 sometimes quotes the surrounding text ('Unexpected token ..., "<text>"
    // is not valid JSON'); that text could hold a secret, so it is cut off,
    // and the SyntaxError is not kept as `cause`, which logs would print.
    const cleaned = reason
      .replace(/,\s*".*" is not valid JSON$/s, '')
      .replace(/ (?:in JSON )?at position \d+.*$/s, '')
      // biome-ignore lint/suspicious/noControlCharactersInRegex: escaping control characters is what this line is for
      .replace(/[\u0000-\u001f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
      .replace(/^./, (c) => c.toLowerCase());
    const at = offset === undefined ? undefined : lineColumn(text, offset);
    const where = at ? ` at line ${at.line}, column ${at.column}` : '';
    throw new ConfigError(file, '', `invalid JSON${where}: ${cleaned}; expected plain JSON (no comments, no trailing commas)`);
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/**
 * `overrides` laid over `base`: objects merge key by key, anything else
 * (arrays, null included) replaces. Keys are defined, not assigned, so a
 * "__proto__" key stays an ordinary key for the schema to reject.
 */
export function mergeOverrides(base: unknown, overrides: unknown): unknown {
  if (overrides === undefined) return base;
  if (!isPlainObject(base) || !isPlainObject(overrides)) return overrides;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(base)) define(out, k, v);
  for (const [k, v] of Object.entries(overrides)) define(out, k, mergeOverrides(out[k], v));
  return out;
}

function define(target: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

/** Freezes `value` and everything reachable from it. */
export function deepFreeze<T>(value: T, seen = new WeakSet<object>()): T {
  if (typeof value !== 'object' || value === null || seen.has(value)) return value;
  seen.add(value);
  // A frozen container may still hold unfrozen children, so recurse anyway.
  for (const key of Reflect.ownKeys(value)) deepFreeze((value as Record<PropertyKey, unknown>)[key], seen);
  return Object.freeze(value);
}

/**
 * The whole pipeline for a daemon: read `file` (or start from {} when there
 * is none), lay `overrides` over it, validate, `resolve` (defaults, paths),
 * deep-freeze. Relative paths are resolved by `resolve` against
 * `origin.baseDir`: the file's directory, or the working directory without a
 * file.
 */
export function loadJsonConfig<S extends z.ZodType, T>(
  file: string | undefined,
  schema: S,
  resolve: (value: z.output<S>, origin: ConfigOrigin) => T,
  overrides?: unknown,
): T {
  const source = file === undefined ? DEFAULTS_SOURCE : path.resolve(file);
  const baseDir = file === undefined ? process.cwd() : path.dirname(source);
  const raw = mergeOverrides(file === undefined ? {} : readJsonConfig(source), overrides);
  return deepFreeze(resolve(validateConfig(schema, raw, source), { source, baseDir }));
}

// ---------------------------------------------------------------------------
// The key server

function resolveKeys(keys: '*' | readonly string[]): '*' | readonly string[] {
  return keys === '*' ? '*' : [...keys];
}

function resolveKeyserver(c: KeyserverFile, { source, baseDir }: ConfigOrigin): KeyserverConfig {
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

/**
 * Loads the key server's config from `file` (JSON), or the defaults when no
 * file is given. `overrides` is deep-merged over the file before validation
 * and validated with it. Reads nothing but `file`: modules, PIN files and
 * certificates are opened later by the parts that use them.
 */
export function loadKeyserverConfig(file?: string, overrides?: unknown): KeyserverConfig {
  return loadJsonConfig(file, keyserverFileSchema, resolveKeyserver, overrides);
}

/** Validates an already-parsed config; pure (no I/O), for tests and embedding. */
export function parseKeyserverConfig(raw: unknown, source: string, baseDir: string): KeyserverConfig {
  return deepFreeze(resolveKeyserver(validateConfig(keyserverFileSchema, raw, source), { source, baseDir }));
}

// ---------------------------------------------------------------------------
// The proxy

function resolveProxy(c: ProxyFile, { source, baseDir }: ConfigOrigin): ProxyConfig {
  const D = PROXY_DEFAULTS;
  const fromConfigDir = (p: string) => path.resolve(baseDir, p);
  const stateDir = fromConfigDir(c.stateDir ?? D.stateDir);
  const ks = c.keyserver;
  // A path relative to the state directory, like the key server's own socket; TLS files relative to the config.
  const endpoint = (name: string, socket: string | null, tcp: NonNullable<NonNullable<ProxyFile['keyserver']>['tcp']> | null): KeyserverEndpoint => ({
    name,
    socket: socket === null ? null : path.resolve(stateDir, socket),
    tcp:
      tcp === null
        ? null
        : {
            host: tcp.host,
            port: tcp.port,
            ca: fromConfigDir(tcp.ca),
            cert: fromConfigDir(tcp.cert),
            key: fromConfigDir(tcp.key),
            servername: tcp.servername ?? null,
          },
  });
  const servers =
    ks?.servers !== undefined
      ? ks.servers.map((e, i) => endpoint(e.name ?? String(i), e.socket ?? null, e.tcp ?? null))
      : [endpoint('0', ks?.socket === null || (ks?.tcp ?? null) !== null ? null : (ks?.socket ?? D.keyserver.socket), ks?.tcp ?? null)];
  return {
    source,
    stateDir,
    workers: c.workers ?? D.workers,
    keyserver: {
      servers,
      timeoutMs: ks?.timeoutMs ?? D.keyserver.timeoutMs,
      breakerMs: ks?.breakerMs ?? D.keyserver.breakerMs,
      healthIntervalMs: ks?.healthIntervalMs ?? D.keyserver.healthIntervalMs,
    },
    listen: (c.listen ?? D.listen).map((l: { host?: string; port: number; profile?: TlsProfileName; http2?: boolean }) => {
      const profile = l.profile ?? 'intermediate';
      return { host: l.host ?? '127.0.0.1', port: l.port, profile, http2: l.http2 ?? D.listenHttp2[profile] };
    }),
    httpRedirect:
      c.httpRedirect === undefined || c.httpRedirect === null ? D.httpRedirect : { host: c.httpRedirect.host ?? '127.0.0.1', port: c.httpRedirect.port },
    certificates: (c.certificates ?? []).map((cert) => ({ name: cert.name, chain: fromConfigDir(cert.chain) })),
    certStore: {
      // Like the key server socket: relative to the state directory, which is itself relative to the config.
      dir: path.resolve(stateDir, c.certStore?.dir ?? D.certStore.dir),
      rescanSeconds: c.certStore?.rescanSeconds ?? D.certStore.rescanSeconds,
      intermediates: typeof c.certStore?.intermediates === 'string' ? fromConfigDir(c.certStore.intermediates) : D.certStore.intermediates,
    },
    sni: { default: c.sni?.default ?? D.sni.default, onUnknown: c.sni?.onUnknown ?? D.sni.onUnknown },
    domains: (c.domains ?? []).map((d) => resolveDomain(d, baseDir)),
    forwarding: { trustedProxies: [...(c.forwarding?.trustedProxies ?? D.forwarding.trustedProxies)] },
    tls: { ...D.tls, ...definedOnly(c.tls ?? {}) },
    admin:
      c.admin === null
        ? null
        : {
            host: c.admin?.host ?? D.admin.host,
            port: c.admin?.port ?? D.admin.port,
            tokenFile: path.resolve(stateDir, c.admin?.tokenFile ?? D.admin.tokenFile),
          },
    log: { level: c.log?.level ?? D.log.level },
    shutdownGraceMs: c.shutdownGraceMs ?? D.shutdownGraceMs,
    workerStartTimeoutMs: c.workerStartTimeoutMs ?? D.workerStartTimeoutMs,
    limits: { ...D.limits, ...definedOnly(c.limits ?? {}) },
    etcd:
      c.etcd === undefined || c.etcd === null
        ? D.etcd
        : {
            endpoints: c.etcd.endpoints.map((u) => new URL(u).origin),
            prefix: c.etcd.prefix ?? D.etcdSettings.prefix,
            tls:
              c.etcd.tls === undefined || c.etcd.tls === null
                ? null
                : {
                    ca: fromConfigDir(c.etcd.tls.ca),
                    cert: c.etcd.tls.cert === undefined ? null : fromConfigDir(c.etcd.tls.cert),
                    key: c.etcd.tls.key === undefined ? null : fromConfigDir(c.etcd.tls.key),
                  },
            auth:
              c.etcd.auth === undefined || c.etcd.auth === null
                ? null
                : { username: c.etcd.auth.username, passwordFile: fromConfigDir(c.etcd.auth.passwordFile) },
            timeoutMs: c.etcd.timeoutMs ?? D.etcdSettings.timeoutMs,
            maxRequestBytes: c.etcd.maxRequestBytes ?? D.etcdSettings.maxRequestBytes,
          },
    acme: c.acme === undefined || c.acme === null ? D.acme : resolveAcme(c.acme, fromConfigDir),
  };
}

/**
 * One domain of the file's `domains` (or a route kept in the shared store) in
 * its resolved form; relative paths resolve against `baseDir`.
 */
export function resolveDomain(d: z.output<typeof domainSchema>, baseDir: string): ProxyDomain {
  return {
    name: d.name,
    // The schema guarantees exactly one of the two; URLs are kept as origins (no trailing slash).
    origins: (d.origins ?? [d.origin ?? '']).map((u) => new URL(u).origin),
    originHost: d.originHost ?? null,
    originTls: { ca: d.originTls?.ca === undefined ? null : path.resolve(baseDir, d.originTls.ca), servername: d.originTls?.servername ?? null },
    maxBodyBytes: d.maxBodyBytes ?? null,
    hsts: { includeSubDomains: d.hsts?.includeSubDomains ?? false, preload: d.hsts?.preload ?? false },
  };
}

function resolveAcme(a: NonNullable<ProxyFile['acme']>, fromConfigDir: (p: string) => string): AcmeConfig {
  const D = PROXY_DEFAULTS.acmeDefaults;
  return {
    directory: a.directory,
    caBundle: typeof a.caBundle === 'string' ? fromConfigDir(a.caBundle) : D.caBundle,
    contact: [...(a.contact ?? D.contact)],
    eab: a.eab === undefined || a.eab === null ? D.eab : { kid: a.eab.kid, hmacKeyFile: fromConfigDir(a.eab.hmacKeyFile) },
    challenges: [...(a.challenges ?? D.challenges)],
    keyType: a.keyType ?? D.keyType,
    keyserverConfig: typeof a.keyserverConfig === 'string' ? fromConfigDir(a.keyserverConfig) : D.keyserverConfig,
    profile: a.profile ?? D.profile,
    timeoutMs: a.timeoutMs ?? D.timeoutMs,
    orderTimeoutSeconds: a.orderTimeoutSeconds ?? D.orderTimeoutSeconds,
    renewal: { ...D.renewal, ...definedOnly(a.renewal ?? {}) },
    onDemand:
      a.onDemand === undefined || a.onDemand === null
        ? D.onDemand
        : {
            ...PROXY_DEFAULTS.onDemandDefaults,
            ...definedOnly(a.onDemand),
            ask: a.onDemand.ask ?? null,
            cnameTarget: a.onDemand.cnameTarget ?? null,
            resolver: a.onDemand.resolver ?? null,
          },
  };
}

/** Loads the proxy's config from `file` (JSON); same rules as the key server's. */
export function loadProxyConfig(file?: string, overrides?: unknown): ProxyConfig {
  return loadJsonConfig(file, proxyFileSchema, resolveProxy, overrides);
}
