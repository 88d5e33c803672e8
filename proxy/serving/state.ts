/**
 * A worker's serving state: the certificates it serves, the SNI and Host
 * indexes over them, and the default certificate. Immutable once built; a
 * reload builds the next state beside the current one and the worker swaps a
 * single reference, so a handshake or request sees one state or the other,
 * never a mix.
 *
 * Cost of a change: the maps are layered (layered.ts): a delta of k
 * certificates makes a state in O(k + changes since the base), sharing the
 * base with the state before it, so a renewal in a store of 100,000 does not
 * copy or re-index 100,000 entries. The base is either plain maps (rebuilt
 * once the changes on top outgrow it, and whenever a change touches a name
 * two certificates claim, so the first listed keeps it) or a pack's table
 * (table.ts), read on demand and replaced only by the next whole state the
 * primary sends (distribute.ts).
 *
 * Building does no X.509 parsing (the primary validated everything): a
 * certificate is made from its record (served.ts), and the parsed leaf that
 * OCSP stapling needs is made on first use, in the stapler's background loop.
 */
import type { ProxyConfig } from '../../config/proxy-schema.js';
import type { ServedCertificate } from '../certs/certificate.js';
import type { Domain } from '../http/handler.js';
import { buildNameIndex, type NameIndex, normaliseName } from '../tls/names.js';
import { LayeredMap } from './layered.js';
import { servedFromRecord } from './served.js';
import type { CertificateRecord, Routing, ServingDelta } from './spec.js';
import { type PackedTable, RowView } from './table.js';

export { servedFromRecord } from './served.js';

/** The layered maps behind a state's views. */
export interface ServingLayers {
  readonly records: LayeredMap<string, CertificateRecord>;
  readonly certificates: LayeredMap<string, ServedCertificate>;
  readonly exact: LayeredMap<string, ServedCertificate>;
  readonly wildcard: LayeredMap<string, ServedCertificate>;
  /** Served names two certificates claim (normalised): a change touching one rebuilds the index. */
  readonly conflicts: ReadonlySet<string>;
  /** The certificates that staple, by entry name: few, and the stapler knows them by identity. */
  readonly stapled: ReadonlyMap<string, ServedCertificate>;
  /** The base is a pack's table: never rebuilt here, replaced by the primary's next whole state. */
  readonly packed: boolean;
}

export interface ServingState {
  readonly generation: number;
  readonly records: ReadonlyMap<string, CertificateRecord>;
  readonly certificates: ReadonlyMap<string, ServedCertificate>;
  readonly sni: NameIndex<ServedCertificate>;
  /** Serves unknown names when sni.onUnknown is "default". */
  readonly fallback: ServedCertificate | undefined;
  /** Serves clients that send no SNI. */
  readonly noSni: ServedCertificate | undefined;
  readonly domains: NameIndex<Domain>;
  readonly sniConfig: ProxyConfig['sni'];
  readonly layers: ServingLayers;
}

export interface AppliedDelta {
  readonly state: ServingState;
  /** Certificates new or replaced (their contexts may be built before the swap); empty for a pack's whole state, read on demand. */
  readonly changed: readonly ServedCertificate[];
  readonly removed: readonly string[];
  /** A pack's whole state replaced everything: what changed is not listed (live.ts keeps what is still current). */
  readonly rebased: boolean;
}

type Conflict = (name: string, kept: string, dropped: string) => void;

const EMPTY_ROUTING: Routing = { domains: [], sni: { default: null, onUnknown: 'reject' } };

export const EMPTY_STATE: ServingState = plainState(0, EMPTY_ROUTING, [], () => {});

/** Conflicting names are reported, first listed wins (config order, then store order). */
export function applyDelta(current: ServingState, delta: ServingDelta, onConflict: Conflict = () => {}): AppliedDelta {
  if (delta.whole === true && delta.table !== undefined) return packedState(delta, delta.table, onConflict);
  if (delta.whole === true) {
    // A certificate whose record did not change keeps its object (and so its staple).
    const changed: ServedCertificate[] = [];
    const pairs = delta.upsert.map((record): [CertificateRecord, ServedCertificate] => {
      const old = current.records.get(record.name);
      const kept = old !== undefined && old.inputId === record.inputId && old.serial === record.serial ? current.certificates.get(record.name) : undefined;
      const certificate = kept ?? servedFromRecord(record);
      if (kept === undefined) changed.push(certificate);
      return [record, certificate];
    });
    const names = new Set(delta.upsert.map((r) => r.name));
    const removed = [...current.records.keys()].filter((name) => !names.has(name));
    return { state: plainState(delta.generation, delta.routing, pairs, onConflict), changed, removed, rebased: false };
  }
  return applyChange(current, delta, onConflict);
}

/**
 * A pack's whole state, its maps views over the table. Apart from
 * applyDelta, whose scope holds the current state: the views' closure would
 * keep that scope, so each state read from a pack held the one before it,
 * and every earlier state (their tables, their packs' descriptors and
 * unlinked files) lived as long as the worker.
 */
function packedState(delta: ServingDelta, table: PackedTable, onConflict: Conflict): AppliedDelta {
  for (const c of table.conflicts) onConflict(c.name, c.kept, c.dropped);
  const certificate = (row: number): ServedCertificate => table.certificate(row);
  const layers: ServingLayers = {
    records: new LayeredMap(table.recordsView()),
    certificates: new LayeredMap(table.certificatesView()),
    exact: new LayeredMap(new RowView(table.sni.exact, certificate)),
    wildcard: new LayeredMap(new RowView(table.sni.wildcard, certificate)),
    conflicts: new Set(table.conflicts.map((c) => c.name)),
    stapled: new Map(table.stapled.map((row) => [table.names[row]!, table.certificate(row)])),
    packed: true,
  };
  return { state: stateOf(delta.generation, delta.routing, layers), changed: [], removed: [], rebased: true };
}

/** A delta of k certificates on top of the current layers, the index updated name by name; a rebuild when that cannot keep "first listed wins". */
function applyChange(current: ServingState, delta: ServingDelta, onConflict: Conflict): AppliedDelta {
  const layers = current.layers;
  const upserted = delta.upsert.map((record): [CertificateRecord, ServedCertificate] => [record, servedFromRecord(record)]);
  const changed = upserted.map(([, certificate]) => certificate);
  const certificates = layers.certificates.with(
    upserted.map(([record, certificate]) => [record.name, certificate]),
    delta.remove,
  );
  const records = layers.records.with(
    delta.upsert.map((record) => [record.name, record]),
    delta.remove,
  );
  const index = updatedIndex(layers, [...delta.remove, ...delta.upsert.map((r) => r.name)], changed);
  const outgrown = !layers.packed && certificates.changes > Math.max(64, certificates.base.size / 2);
  if (index === undefined || outgrown) {
    const pairs = [...certificates].map(([name, certificate]): [CertificateRecord, ServedCertificate] => [records.get(name)!, certificate]);
    return { state: plainState(delta.generation, delta.routing, pairs, onConflict), changed, removed: delta.remove, rebased: false };
  }
  const stapled = new Map(layers.stapled);
  for (const name of delta.remove) stapled.delete(name);
  for (const [record, certificate] of upserted) {
    if (record.stapled) stapled.set(record.name, certificate);
    else stapled.delete(record.name);
  }
  const next: ServingLayers = { ...layers, records, certificates, exact: index.exact, wildcard: index.wildcard, stapled };
  return { state: stateOf(delta.generation, delta.routing, next), changed, removed: delta.remove, rebased: false };
}

/**
 * The SNI index after the certificates of `affected` entries were removed or
 * replaced by `added`; undefined when a name involved is claimed by another
 * certificate (before or after), which only a rebuild in order settles.
 */
function updatedIndex(
  layers: ServingLayers,
  affected: readonly string[],
  added: readonly ServedCertificate[],
): { exact: LayeredMap<string, ServedCertificate>; wildcard: LayeredMap<string, ServedCertificate> } | undefined {
  const work = { exact: new Map<string, ServedCertificate | null>(), wildcard: new Map<string, ServedCertificate | null>() };
  const slot = (raw: string): { kind: 'exact' | 'wildcard'; key: string; name: string } | undefined => {
    const name = normaliseName(raw);
    if (name === undefined) return undefined;
    return name.startsWith('*.') ? { kind: 'wildcard', key: name.slice(2), name } : { kind: 'exact', key: name, name };
  };
  const owner = (kind: 'exact' | 'wildcard', key: string): ServedCertificate | null | undefined =>
    work[kind].has(key) ? work[kind].get(key) : layers[kind].get(key);
  for (const name of new Set(affected)) {
    const old = layers.certificates.get(name);
    if (old === undefined) continue;
    for (const raw of old.names) {
      const s = slot(raw);
      if (s === undefined) continue;
      if (layers.conflicts.has(s.name)) return undefined;
      if (owner(s.kind, s.key)?.name === old.name) work[s.kind].set(s.key, null);
    }
  }
  for (const certificate of added) {
    for (const raw of certificate.names) {
      const s = slot(raw);
      if (s === undefined) continue;
      if (layers.conflicts.has(s.name)) return undefined;
      const held = owner(s.kind, s.key);
      if (held === undefined || held === null) work[s.kind].set(s.key, certificate);
      else if (held !== certificate) return undefined;
    }
  }
  const layer = (kind: 'exact' | 'wildcard'): LayeredMap<string, ServedCertificate> => {
    const set: [string, ServedCertificate][] = [];
    const remove: string[] = [];
    for (const [key, value] of work[kind]) {
      if (value === null) remove.push(key);
      else set.push([key, value]);
    }
    return layers[kind].with(set, remove);
  };
  return { exact: layer('exact'), wildcard: layer('wildcard') };
}

/** A state on plain maps, every name indexed in order. */
function plainState(
  generation: number,
  routing: Routing,
  pairs: Iterable<readonly [CertificateRecord, ServedCertificate]>,
  onConflict: Conflict,
): ServingState {
  const records = new Map<string, CertificateRecord>();
  const certificates = new Map<string, ServedCertificate>();
  const stapled = new Map<string, ServedCertificate>();
  for (const [record, certificate] of pairs) {
    records.set(record.name, record);
    certificates.set(record.name, certificate);
    if (record.stapled) stapled.set(record.name, certificate);
  }
  const conflicts = new Set<string>();
  const sni = buildNameIndex(
    [...certificates.values()].map((c) => ({ names: c.names, value: c })),
    (name, kept, dropped) => {
      conflicts.add(name);
      onConflict(name, kept.name, dropped.name);
    },
  );
  return stateOf(generation, routing, {
    records: new LayeredMap(records),
    certificates: new LayeredMap(certificates),
    exact: new LayeredMap(sni.exact),
    wildcard: new LayeredMap(sni.wildcard),
    conflicts,
    stapled,
    packed: false,
  });
}

function stateOf(generation: number, routing: Routing, layers: ServingLayers): ServingState {
  const { sni: sniConfig, domains } = routing;
  const byDefault = sniConfig.default === null ? undefined : layers.certificates.get(sniConfig.default);
  return {
    generation,
    records: layers.records,
    certificates: layers.certificates,
    sni: { exact: layers.exact, wildcard: layers.wildcard },
    fallback: sniConfig.onUnknown === 'default' ? byDefault : undefined,
    noSni: byDefault,
    domains: buildNameIndex(domains.map((d) => ({ names: [d.name], value: d }))),
    sniConfig,
    layers,
  };
}
