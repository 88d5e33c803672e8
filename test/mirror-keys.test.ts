/**
 * Mirror.keys(under) answers from per-prefix indexes kept by every set, delete
 * and snapshot: checked here against the plain walk it replaced (every key of
 * the mirror filtered by prefix, in the mirror's order) over a few thousand
 * seeded random changes, snapshots and cache loads, so a change that forgot an
 * index, or put a key out of order, shows as a difference.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { writeCache } from '../proxy/store/cache.js';
import { Mirror, type MirrorItem } from '../proxy/store/mirror.js';

const dir = mkdtempSync(join(tmpdir(), 'mirror-keys-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PREFIX = '/m/';
// Nested and overlapping prefixes, lock keys (never mirrored), a key that is itself a prefix's stem.
const STEMS = ['certs/', 'routes/', 'acme/certificates/', 'acme/challenges/', 'acme/answering/', 'acme/on-demand/refused/', 'locks/', 'acme/'];
const POOL = [...STEMS.flatMap((stem) => Array.from({ length: 12 }, (_, i) => `${stem}n${i}`)), 'tickets', 'acme/challenges', 'certs/n1/x'];
// What callers ask, plus '' (everything) and unders that end mid-name.
const UNDERS = [...STEMS, '', 'acme/on-demand/', 'certs/n1', 'tickets', 'nothing/'];

/** Fixed-seed xorshift: the same sequence on every run. */
function random(seed: number): (n: number) => number {
  let x = seed;
  return (n) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

describe('the mirror key index', () => {
  it('answers keys(under) as a walk of the whole mirror would, in the same order, through random sets, deletes and snapshots', () => {
    const pick = random(0x9e3779b9);
    const cacheFile = join(dir, 'cache.json');
    const mirror = new Mirror({ prefix: PREFIX, cacheFile, log: createLogger('mirror-keys-test', 'silent', process.stderr), onChange: () => {} });
    // The model: the mirror's rules (lock keys dropped, an older revision ignored) on a plain Map.
    let model = new Map<string, MirrorItem>();
    let revision = 1;
    const check = (under: string): void => {
      const walked = [...model.keys()].filter((k) => k.startsWith(under)).map((k) => k.slice(under.length));
      expect(mirror.keys(under), `keys(${JSON.stringify(under)})`).toEqual(walked);
    };
    for (let op = 0; op < 4_000; op++) {
      const roll = pick(100);
      if (roll < 2) {
        // A snapshot: a random part of the pool, in a random order, at a revision of its own.
        const snapshot: [string, MirrorItem][] = [];
        for (const key of POOL) if (pick(2) === 0) snapshot.splice(pick(snapshot.length + 1), 0, [key, { value: `s${op}`, modRevision: 1 + pick(revision) }]);
        mirror.replace(snapshot, ++revision);
        model = new Map(snapshot.filter(([key]) => !key.startsWith('locks/')));
      } else if (roll < 3) {
        // The cache file taken at a start (loadCache), in place of everything.
        const entries: Record<string, MirrorItem> = {};
        for (const key of POOL) if (!key.startsWith('locks/') && pick(3) === 0) entries[key] = { value: `c${op}`, modRevision: ++revision };
        writeCache(cacheFile, { prefix: PREFIX, revision, entries });
        expect(mirror.loadCache()).toBe(revision);
        model = new Map(Object.entries(entries));
      } else {
        // A batch of watch events; some behind what is held (dropped), half of them deletes.
        const batch = Array.from({ length: 1 + pick(4) }, () => ({
          key: POOL[pick(POOL.length)]!,
          value: pick(2) === 0 ? undefined : `v${op}`,
          revision: pick(5) === 0 ? pick(revision + 1) : ++revision,
        }));
        mirror.apply(batch, revision);
        for (const { key, value, revision: at } of batch) {
          const held = model.get(key);
          if (key.startsWith('locks/') || (held !== undefined && held.modRevision >= at)) continue;
          if (value === undefined) model.delete(key);
          else model.set(key, { value, modRevision: at });
        }
      }
      // Each under is first asked at a different point (so its index is built from a different state), then always.
      for (const under of UNDERS.slice(0, 1 + Math.floor(op / 300))) check(under);
    }
    for (const key of POOL) expect(mirror.item(key)).toEqual(model.get(key));
    // Past the bound on indexes, an under is answered by a walk, just as well.
    for (let i = 0; i < 40; i++) check(`certs/n${i}`);
    mirror.flush();
  });

  it('gives each caller its own array (callers sort it in place)', () => {
    const mirror = new Mirror({
      prefix: PREFIX,
      cacheFile: join(dir, 'own.json'),
      log: createLogger('mirror-keys-test', 'silent', process.stderr),
      onChange: () => {},
    });
    mirror.apply(
      ['routes/b', 'routes/a', 'routes/c'].map((key, i) => ({ key, value: 'x', revision: i + 1 })),
      3,
    );
    mirror.keys('routes/').sort().reverse().pop();
    expect(mirror.keys('routes/')).toEqual(['b', 'a', 'c']);
    mirror.flush();
  });
});
