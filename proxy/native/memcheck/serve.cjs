#!/usr/bin/env node
/*
 * The process the memcheck run watches (test/keyless-memcheck.test.ts starts it under valgrind):
 * the keyless bridge and one node:tls server whose key is at the key server. It only serves; the
 * test process is the TLS client and injects the faults (key servers killed, restarted, lying).
 *
 * stdin, one JSON command a line; stdout, one JSON answer a line:
 *   { cmd: 'init', options }                 bridge init(options) -> { ok, error? }
 *   { cmd: 'contexts', certs: [{ key, cert }] } builds new secure contexts and swaps them in
 *   { cmd: 'setTls', index, material }       bridge setTls(current generation, index, material) -> { ok, applied?, error? }
 *   { cmd: 'stats' }                         -> { ok, stats }
 *   { cmd: 'exit' }                          closes the server and exits 0 (valgrind then reports)
 * First line out: { ready: port }.
 */
'use strict';
const path = require('node:path');
const readline = require('node:readline');
const tls = require('node:tls');

const addon = require(path.join(__dirname, '..', 'build', 'Release', 'keyless_bridge.node'));
let contexts = [];
let next = 0;

// SNICallback picks a context per handshake, so a swap leaves handshakes already past it on the old one.
const server = tls.createServer({
  SNICallback: (_name, cb) => cb(null, contexts[next++ % contexts.length]),
});
server.on('secureConnection', (socket) => {
  socket.on('error', () => undefined);
  socket.end('ok\n');
});
server.on('tlsClientError', () => undefined);

function answer(line) {
  const msg = JSON.parse(line);
  switch (msg.cmd) {
    case 'init':
      try {
        addon.init(msg.options);
        return { ok: true };
      } catch (err) {
        return { ok: false, error: err.message };
      }
    case 'contexts':
      contexts = msg.certs.map((c) => tls.createSecureContext({ key: c.key, cert: c.cert }));
      return { ok: true };
    case 'setTls':
      try {
        return { ok: true, applied: addon.setTls(addon.stats().generation, msg.index, msg.material) };
      } catch (err) {
        return { ok: false, error: err.message };
      }
    case 'stats':
      return { ok: true, stats: addon.stats() };
    case 'exit':
      contexts = [];
      server.close(() => process.exit(0));
      return { ok: true };
    default:
      return { ok: false, error: `unknown command ${msg.cmd}` };
  }
}

readline
  .createInterface({ input: process.stdin })
  .on('line', (line) => process.stdout.write(`${JSON.stringify(answer(line))}\n`))
  .on('close', () => process.exit(0)); // the test is gone
server.listen(0, '127.0.0.1', () => process.stdout.write(`${JSON.stringify({ ready: server.address().port })}\n`));
