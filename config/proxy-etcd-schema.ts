/**
 * The "etcd" section of the proxy's config file: the fleet's shared store
 * (proxy/store/), its endpoints, key prefix, TLS and user auth, and the
 * bounds of one request. Resolved into EtcdSettings (config/proxy-config.ts).
 * Whether an https:// endpoint has the "tls" it needs is checked with the
 * whole file (config/proxy-schema.ts).
 */
import { z } from 'zod';
import { ETCD_PREFIX_EXPECTED, etcdEndpoint } from './proxy-values.js';
import { intIn, strict, text } from './schema-kit.js';

export const etcdSectionSchema = strict(
  {
    endpoints: z
      .array(etcdEndpoint, { error: 'expected a non-empty array of etcd endpoint URLs' })
      .min(1, { error: 'expected at least one etcd endpoint' })
      .max(32, { error: 'expected at most 32 etcd endpoints' }),
    prefix: z
      .string({ error: ETCD_PREFIX_EXPECTED })
      .regex(/^\/([\w.-]+\/)+$/, { error: ETCD_PREFIX_EXPECTED })
      .max(128, { error: ETCD_PREFIX_EXPECTED })
      .optional(),
    tls: strict(
      {
        ca: text("a PEM CA path (issuer of etcd's server certificates)"),
        cert: text("a PEM path: this node's etcd client certificate").optional(),
        key: text("a PEM path: this node's etcd client certificate key").optional(),
      },
      'an object { "ca", "cert", "key" }',
    )
      .refine((t) => (t.cert === undefined) === (t.key === undefined), { error: 'expected both "cert" and "key", or neither' })
      .nullable()
      .optional(),
    auth: strict(
      { username: text('an etcd user name'), passwordFile: text("a file path holding the etcd user's password") },
      'an object { "username", "passwordFile" }',
    )
      .nullable()
      .optional(),
    timeoutMs: intIn(100, 60_000).optional(),
    // At least a few chains' worth; past 64 MiB etcd itself warns that its raft log stalls on such requests.
    maxRequestBytes: intIn(65_536, 67_108_864).optional(),
  },
  'an object { "endpoints", "prefix", "tls", "auth", "timeoutMs", "maxRequestBytes" }, or null',
);
