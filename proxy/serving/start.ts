/**
 * How a worker's serving starts, and who reloads it when no cluster primary
 * does. Under the cluster the primary sends the first delta; a worker
 * started alone (tests, benchmarks, embedding) reads its config file and the
 * store itself through the same reload path (`OwnServing`, over source.ts)
 * and reloads through it on `reload()`.
 *
 * A start is refused, with a ConfigError naming the config file, when a
 * certificate the config file names cannot load (`refuseStartOnConfigCertificates`,
 * the primary's rule too) or when the first state cannot be served
 * (`serveFirst`): the operator asked for it by name, so a start without it
 * would hide the mistake.
 *
 * Cost: a worker started alone holds one ServingSource (its key server
 * client for verification) until it closes.
 */
import { existsSync } from 'node:fs';
import type { ProxyConfig } from '../../config/proxy-schema.js';
import { ConfigError } from '../../keyserver/shared/errors.js';
import type { Logger } from '../../keyserver/shared/log.js';
import type { LiveServing } from './live.js';
import type { NextServing } from './next-serving.js';
import { ServingSource } from './source.js';
import type { ServingDelta } from './spec.js';

/**
 * At start, a certificate named in the config file must load: it is what the operator asked for by name. Only its own
 * refusal counts: a store entry of the same name is refused too ('names'), under that name, while the config's
 * certificate serves; taken for the config's, it refused a start after the reload that served it.
 */
export function refuseStartOnConfigCertificates(config: ProxyConfig, first: NextServing): void {
  const loaded = new Set(first.delta.upsert.filter((r) => r.from === 'config').map((r) => r.name));
  const refused = first.refused.find((r) => !loaded.has(r.name) && config.certificates.some((c) => c.name === r.name));
  if (refused !== undefined)
    throw new ConfigError(config.source, 'certificates', `certificate '${refused.name}' (${refused.source}) cannot be served: ${refused.message}`);
}

/** Applies the first delta; a failure refuses the start as the config's (a ConfigError naming the file). */
export function serveFirst(serving: Pick<LiveServing, 'apply'>, delta: ServingDelta, config: ProxyConfig): void {
  try {
    serving.apply(delta);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(config.source, 'certificates', (err as Error).message, { cause: err });
  }
}

/** The serving source of a worker started alone: its first delta, then its reloads. */
export class OwnServing {
  readonly #source: ServingSource;
  /** What to serve at start, read, checked and recorded. */
  readonly initial: ServingDelta;

  private constructor(source: ServingSource, initial: ServingDelta) {
    this.#source = source;
    this.initial = initial;
  }

  /** Reads the config file and the store; rejects with a ConfigError when a certificate the config names cannot load. */
  static async start(config: ProxyConfig, log: Logger): Promise<OwnServing> {
    const source = new ServingSource(config, {
      // A config built in memory (tests, benchmarks) has no file to re-read.
      reloadConfig: existsSync(config.source),
      onUnverified: (reason, warning) => log.warn({ reason }, warning),
      warn: (message) => log.warn(message),
    });
    const first = await source.next();
    refuseStartOnConfigCertificates(config, first);
    source.commit(first);
    return new OwnServing(source, first.delta);
  }

  /** Re-reads the config file and the store, hands what changed to `apply` (which throws to refuse it), and records it once applied. */
  async reload(apply: (delta: ServingDelta) => void): Promise<NextServing> {
    const next = await this.#source.next();
    apply(next.delta);
    this.#source.commit(next);
    return next;
  }

  close(): void {
    this.#source.close();
  }
}
