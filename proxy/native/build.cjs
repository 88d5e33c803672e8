#!/usr/bin/env node
/*
 * `npm ci` runs this (package.json "install"): node-gyp rebuild of the addon.
 *
 * node-gyp needs node's headers. A node installed with them (Debian's nodejs,
 * the official tarballs: <prefix>/include/node) is used as --nodedir, so the
 * build never downloads headers; otherwise node-gyp's own lookup applies
 * (npm_config_nodedir, or a download).
 */
'use strict';
const { spawnSync } = require('node:child_process');
const { existsSync } = require('node:fs');
const path = require('node:path');

const args = ['rebuild'];
const prefix = path.dirname(path.dirname(process.execPath));
if (!process.env.npm_config_nodedir && existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) {
  args.push(`--nodedir=${prefix}`);
}
// npm puts its own node-gyp on PATH for lifecycle scripts; outside npm, use npm's copy.
const bundled = path.join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const run = existsSync(bundled)
  ? spawnSync(process.execPath, [bundled, ...args], { cwd: __dirname, stdio: 'inherit' })
  : spawnSync('node-gyp', args, { cwd: __dirname, stdio: 'inherit' });
if (run.error) {
  console.error(`keyedge-keyless-bridge: cannot run node-gyp: ${run.error.message}`);
  process.exit(1);
}
process.exit(run.status ?? 1);
