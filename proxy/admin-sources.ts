/**
 * What the admin API (admin.ts) reads and changes, as the primary supplies it
 * (cluster-admin.ts): the contract between the two, so the HTTP side knows
 * nothing of workers, the store or ACME, and the primary nothing of HTTP.
 */
import type { ProxyConfig } from '../config/proxy-schema.js';
import type { ReloadReport } from './serving/coordinator.js';

export interface AdminControl {
  readonly tokenFile: string;
  readonly reload: () => Promise<ReloadReport>;
  /** Validates and stores a chain for entry `name`, then reloads; rejects with a CertificateError when refused. */
  readonly putCertificate: (name: string, chainText: string) => Promise<ReloadReport>;
  /** What GET /certs shows: the same object until that changes (it is rendered once per object: admin-http.ts jsonOnce). */
  readonly certificates: () => object;
  /** True for a name the config file's `certificates` use: the store may not take it. */
  readonly ownedByConfig: (name: string) => boolean;
  /** Rotates the session-ticket keys; resolves with counts, never key material. */
  readonly rotateTicketKeys?: () => Promise<unknown>;
  /** Stores a route (a `domains[]` entry) for domain `name`, then reloads; fleet only. */
  readonly putRoute?: (name: string, body: unknown) => Promise<ReloadReport>;
  /** Removes a stored route, then reloads; undefined when there was none. */
  readonly deleteRoute?: (name: string) => Promise<ReloadReport | undefined>;
  /** ACME (when configured): issue a managed certificate for these domains, or renew one now; resolve once it serves. */
  readonly acmeIssue?: (domains: readonly string[], name?: string, replaceDomains?: boolean) => Promise<unknown>;
  readonly acmeRenew?: (name: string) => Promise<unknown>;
}

export interface AdminSources {
  readonly metrics: () => Promise<{ readonly contentType: string; readonly body: string }>;
  /** Resolves with undefined when ready, or the reason it is not. */
  readonly notReadyReason: () => Promise<string | undefined>;
  /**
   * Why the node serves in degraded mode, or undefined: its shared store is away (`store`), or a certificate entry
   * is refused with no version of it serving (`certificates`). Sent as `x-keyedge-degraded: <part>`.
   */
  readonly degradedReason?: () => { readonly part: 'store' | 'certificates'; readonly reason: string } | undefined;
  /** The running config: the same object until it changes (GET /config renders it once per object). */
  readonly config: () => ProxyConfig;
  readonly control?: AdminControl;
}
