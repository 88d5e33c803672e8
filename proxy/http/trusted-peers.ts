/**
 * The peers whose forwarding headers (X-Forwarded-For/-Proto/-Host,
 * Forwarded, and the rest of that family: forwarding-fields.ts) are believed:
 * load balancers or proxies in front of keyedge,
 * listed by address or CIDR block in `forwarding.trustedProxies`. Anyone
 * else could write any address there, so their claims are dropped.
 *
 * Immutable after construction; a reload builds a new one.
 */
import net from 'node:net';
import { parseAddressBlock } from '../../config/proxy-schema.js';

const MAPPED_V4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i;

export class TrustedPeers {
  readonly #list = new net.BlockList();
  readonly #empty: boolean;

  /** `blocks` as validated by the config schema (addresses or CIDR blocks). */
  constructor(blocks: readonly string[] = []) {
    for (const text of blocks) {
      const block = parseAddressBlock(text);
      if (block === undefined) throw new TypeError(`not an address or CIDR block: ${text}`);
      this.#list.addSubnet(block.address, block.prefix, block.family);
    }
    this.#empty = blocks.length === 0;
  }

  /** Whether the peer at `address` (as node reports it: IPv4, IPv6 or IPv4-mapped IPv6) is trusted. */
  trusts(address: string | undefined): boolean {
    if (this.#empty || address === undefined) return false;
    // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d (RFC 4291 §2.5.5.2).
    const mapped = MAPPED_V4.exec(address)?.[1];
    if (mapped !== undefined) return this.#list.check(mapped, 'ipv4') || this.#list.check(address, 'ipv6');
    const family = net.isIP(address);
    if (family === 0) return false;
    return this.#list.check(address, family === 4 ? 'ipv4' : 'ipv6');
  }
}
