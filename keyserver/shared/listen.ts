/**
 * Starting a listener the way both daemons need it: resolves once it
 * listens, rejects with the listen error (EADDRINUSE, EACCES) instead of
 * leaving it to an 'error' event, and keeps no handler behind.
 *
 * The rejection is a KEYEDGE_ERR_SETUP naming the address and the errno
 * code, so every listener (TLS fronts, redirect, admin ports, key server
 * sockets, demo origin) reports a taken port the same way and the command
 * exits non-zero with it instead of running half-started.
 */
import type net from 'node:net';
import { KeyedgeError } from './errors.js';

export function listen<S extends net.Server>(server: S, options: net.ListenOptions): Promise<S> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => reject(listenError(options, err));
    server.once('error', onError);
    server.listen(options, () => {
      server.off('error', onError);
      resolve(server);
    });
  });
}

/** `cannot listen on tcp 127.0.0.1:8443: EADDRINUSE`, worded as the key server's own listeners (server/listeners.ts) word it. */
function listenError(options: net.ListenOptions, err: NodeJS.ErrnoException): KeyedgeError {
  const where = options.path !== undefined ? `unix socket ${options.path}` : `tcp ${options.host ?? '*'}:${options.port ?? 0}`;
  return new KeyedgeError('KEYEDGE_ERR_SETUP', `cannot listen on ${where}: ${err.code ?? err.message}`, { cause: err });
}
