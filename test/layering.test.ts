/**
 * The one-way layers (README, "Layout"): config ← keyserver ← proxy ← keyedge.ts.
 * A file may import its own layer and the ones below it, never one above:
 * config/ imports nothing of ours, keyserver/ may import config/, proxy/ may
 * import keyserver/ and config/, and only the root entry (keyedge.ts, .cts)
 * imports every layer. Inside keyserver/, shared/ is the base both daemons
 * build on, so it imports nothing else of keyserver/. bench/ and test/ may
 * import anything; the product imports neither.
 *
 * The import graph comes from the TypeScript compiler's own scanner
 * (ts.preProcessFile): static imports and `import type`, `export … from`,
 * dynamic `import()` and `require()`, so no form of import slips past a regex.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { REPO } from './helpers/basics.js';

const LAYERS = ['config', 'keyserver', 'proxy', 'keyedge.ts'] as const;
const ENTRY = new Set(['keyedge.ts', 'keyedge.cts']);
const SOURCE = /\.(c|m)?ts$/;
/** Our own packages, imported by name: `keyedge-keyless-bridge` is proxy/native (package.json, file:proxy/native). */
const PACKAGES: Record<string, string> = { 'keyedge-keyless-bridge': 'proxy/native/index.ts' };

/** The layer's index in LAYERS; undefined for bench/, test/ and anything else outside the product. */
function layerOf(file: string): number | undefined {
  if (ENTRY.has(file)) return LAYERS.indexOf('keyedge.ts');
  const top = file.split('/')[0];
  const index = LAYERS.findIndex((layer) => layer === top && !layer.endsWith('.ts'));
  return index < 0 ? undefined : index;
}

/** Where an import specifier of `file` points (repo-relative), or undefined for a package that is not ours. */
function targetOf(file: string, specifier: string): string | undefined {
  if (specifier.startsWith('.')) return path.posix.normalize(path.posix.join(path.posix.dirname(file), specifier)).replace(/\.(c|m)?js$/, '.$1ts');
  const [scopeOrName, name] = specifier.split('/');
  return PACKAGES[scopeOrName?.startsWith('@') ? `${scopeOrName}/${name}` : (scopeOrName ?? '')];
}

/** Every import against the allowed direction, as `file: imports 'specifier' (why)`. `files` maps repo-relative paths to source text. */
function layeringViolations(files: ReadonlyMap<string, string>): string[] {
  const found: string[] = [];
  for (const [file, text] of files) {
    const from = layerOf(file);
    if (from === undefined) continue;
    for (const { fileName: specifier } of ts.preProcessFile(text, true, true).importedFiles) {
      const target = targetOf(file, specifier);
      if (target === undefined) continue;
      const to = layerOf(target);
      const where = `${file}: imports '${specifier}'`;
      if (to === undefined) found.push(`${where} (the product imports neither bench/ nor test/)`);
      else if (to > from) found.push(`${where} (${LAYERS[from]} may not import ${LAYERS[to]})`);
      else if (file.startsWith('keyserver/shared/') && target.startsWith('keyserver/') && !target.startsWith('keyserver/shared/')) {
        found.push(`${where} (keyserver/shared/ is the base both daemons share: it imports no other part of keyserver/)`);
      }
    }
  }
  return found;
}

/** The product's sources: the root entry, config/, keyserver/, proxy/ (not following symlinks such as proxy/native/build). */
function productFiles(): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (dir: string): void => {
    for (const entry of readdirSync(path.join(REPO, dir), { withFileTypes: true })) {
      const rel = dir === '' ? entry.name : `${dir}/${entry.name}`;
      if (entry.isDirectory() && entry.name !== 'node_modules' && entry.name !== 'build') walk(rel);
      else if (entry.isFile() && SOURCE.test(entry.name) && !entry.name.endsWith('.d.ts')) files.set(rel, readFileSync(path.join(REPO, rel), 'utf8'));
    }
  };
  for (const name of ENTRY) files.set(name, readFileSync(path.join(REPO, name), 'utf8'));
  for (const dir of ['config', 'keyserver', 'proxy']) walk(dir);
  return files;
}

describe('one-way layers: config ← keyserver ← proxy ← keyedge.ts', () => {
  it('no product file imports against the allowed direction', () => {
    const files = productFiles();
    // Not vacuous: the walk saw each layer and the edges that are allowed.
    for (const layer of ['config/', 'keyserver/shared/', 'keyserver/server/', 'proxy/http/', 'proxy/native/index.ts']) {
      expect(
        [...files.keys()].some((f) => f.startsWith(layer)),
        layer,
      ).toBe(true);
    }
    const edges = [...files].flatMap(([file, text]) => ts.preProcessFile(text, true, true).importedFiles.map((i) => `${file} -> ${i.fileName}`));
    expect(edges).toContain('keyedge.cts -> ./keyedge.js');
    expect(edges.some((e) => e.startsWith('proxy/') && e.includes('/keyserver/shared/'))).toBe(true);
    expect(edges.some((e) => e.startsWith('keyserver/') && e.includes('/config/'))).toBe(true);
    expect(layeringViolations(files)).toEqual([]);
  });

  it('README "Layout" states the same order of layers', () => {
    const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');
    const layout = readme.slice(readme.indexOf('## Layout'));
    expect(layout).toContain(`\`${LAYERS.join(' ← ')}\``);
  });

  it('reports a wrong import, naming the file and the import, in every form an import can take', () => {
    const wrong = new Map([
      ['config/wrong.ts', "import { log } from '../keyserver/shared/log.js';\n"],
      ['keyserver/server/wrong.ts', "export { proxyCommand } from '../../proxy/cli.js';\nimport type { Domain } from '../../proxy/http/handler.js';\n"],
      ['keyserver/cli/wrong.ts', "const m = await import('../../keyedge.js');\nimport bridge from 'keyedge-keyless-bridge';\n"],
      ['keyserver/shared/wrong.ts', "import { listKeys } from '../token/keys.js';\n"],
      ['proxy/wrong.ts', "import { REPO } from '../test/helpers/keyserver.js';\n"],
      ['config/bench-wrong.ts', "import type { BenchOptions } from '../bench/harness/options.js';\n"],
      ['keyedge.ts', "export { lab } from './bench/lab/cert-lab.js';\n"],
    ]);
    expect(layeringViolations(wrong)).toEqual([
      "config/wrong.ts: imports '../keyserver/shared/log.js' (config may not import keyserver)",
      "keyserver/server/wrong.ts: imports '../../proxy/cli.js' (keyserver may not import proxy)",
      "keyserver/server/wrong.ts: imports '../../proxy/http/handler.js' (keyserver may not import proxy)",
      "keyserver/cli/wrong.ts: imports '../../keyedge.js' (keyserver may not import keyedge.ts)",
      "keyserver/cli/wrong.ts: imports 'keyedge-keyless-bridge' (keyserver may not import proxy)",
      "keyserver/shared/wrong.ts: imports '../token/keys.js' (keyserver/shared/ is the base both daemons share: it imports no other part of keyserver/)",
      "proxy/wrong.ts: imports '../test/helpers/keyserver.js' (the product imports neither bench/ nor test/)",
      "config/bench-wrong.ts: imports '../bench/harness/options.js' (the product imports neither bench/ nor test/)",
      "keyedge.ts: imports './bench/lab/cert-lab.js' (the product imports neither bench/ nor test/)",
    ]);
  });

  it('reports a wrong import added to the real tree, and only that one', () => {
    const files = productFiles();
    const text = files.get('config/load.ts');
    expect(text).toBeDefined();
    files.set('config/load.ts', `import { ProxyMetrics } from '../proxy/metrics.js';\n${text}`);
    expect(layeringViolations(files)).toEqual(["config/load.ts: imports '../proxy/metrics.js' (config may not import proxy)"]);
  });

  it('lets the entry, bench/ and test/ import every layer, and each layer import those below it', () => {
    const allowed = new Map([
      ['keyedge.ts', "import { proxyCommand } from './proxy/cli.js';\nimport { keyCommand } from './keyserver/cli/key-commands.js';\n"],
      ['bench/x.ts', "import { startWorker } from '../proxy/worker.js';\n"],
      ['test/x.test.ts', "import { run } from '../keyedge.js';\n"],
      ['proxy/http/x.ts', "import { log } from '../../keyserver/shared/log.js';\nimport type { ProxyConfig } from '../../config/proxy-schema.js';\n"],
      ['keyserver/server/x.ts', "import { loadKeyserverConfig } from '../../config/load.js';\nimport { keyIdOf } from '../shared/key-id.js';\n"],
    ]);
    expect(layeringViolations(allowed)).toEqual([]);
  });
});
