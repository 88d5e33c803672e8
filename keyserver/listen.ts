/**
 * Starting a listener the way both daemons need it: resolves once it
 * listens, rejects with the listen error (EADDRINUSE, EACCES) instead of
 * leaving it to an 'error' event, and keeps no handler behind.
 */
import type net from 'node:net';

export function listen<S extends net.Server>(server: S, options: net.ListenOptions): Promise<S> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
