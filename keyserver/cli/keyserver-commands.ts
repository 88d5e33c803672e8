/**
 * `keyedge keyserver`: run the key server in the foreground until SIGTERM or
 * SIGINT (graceful: in-flight requests finish); SIGHUP rescans the token.
 * `keyedge ping`: ask a running key server for round trips.
 */
import { loadKeyserverConfig } from '../../config/load.js';
import { KeyserverClient } from '../client/client.js';
import { UsageError } from '../shared/errors.js';
import { startKeyserver } from '../server/daemon.js';
import { exitBySignal } from '../server/exit-by-signal.js';
import { type Command, parseCommandArgs } from '../shared/command.js';
import { createLogger } from '../shared/log.js';
import { guardKeyserver } from './pin-guard.js';

const KEYSERVER_USAGE = `Usage: keyedge keyserver [--config FILE]

Runs the key server in the foreground: signs handshake digests with keys that
never leave the PKCS#11 token. Without --config it uses the embedded default:
a SoftHSM2 token under ./var (created on first run), a unix socket at
./var/keyserver.sock and metrics on http://127.0.0.1:9464/metrics.

Signals: SIGTERM/SIGINT stop gracefully (in-flight requests finish, up to
limits.shutdownGraceMs; signs the token has not answered by then are left
in it and the process ends by the signal), SIGHUP rescans the token for keys.
A call the token holds on the event loop itself (a sign, a key scan; no
signal is handled then) is logged past twice limits.requestTimeoutMs; once
serving, a call held limits.tokenStallExitMs (a minute) ends the process
(SIGKILL) for its supervisor to restart it, as does a token that must be
opened again while a sign has been held in it that long.

The PIN stays out of reach of the user's other processes: a PIN variable
(pkcs11.pin.env) is taken out of the environment and wiped from
/proc/<pid>/environ, and the process is non-dumpable (no core dump; gdb -p,
strace -p, lsof on it need root). Linux; elsewhere a warning says so.
SIGUSR1 opens no inspector (it is logged and ignored).

Options:
  --config FILE   JSON config (see config/keyserver.json)
  --help          this text
`;

/** How long past limits.shutdownGraceMs a stop may take before the process ends anyway. */
const STOP_MARGIN_MS = 5_000;

export const keyserverCommand: Command = {
  name: 'keyserver',
  async run(argv) {
    const { values } = parseCommandArgs(argv, { config: { type: 'string' } }, KEYSERVER_USAGE);
    if (values.help) {
      process.stdout.write(KEYSERVER_USAGE);
      return 0;
    }
    const config = loadKeyserverConfig(values.config);
    const log = createLogger('keyserver', config.log.level);
    // Before the token is opened: the PIN out of /proc/<pid>/environ, the process's memory out of its user's reach.
    guardKeyserver(config, (message) => log.warn(message));
    const server = await startKeyserver(config, { log });
    process.on('SIGHUP', () => {
      server.log.info('SIGHUP: rescanning the token');
      try {
        server.rescanKeys();
      } catch (err) {
        // A throw here would end the process: the keys already loaded keep signing, a later SIGHUP tries again.
        server.log.error({ err }, 'SIGHUP: the token scan failed; the keys already loaded stay in use');
      }
    });
    const signal = await new Promise<NodeJS.Signals>((resolve) => {
      const stop = (signal: NodeJS.Signals): void => {
        server.log.info({ signal }, 'stopping');
        // A backstop: the stop is bounded by the grace; past it and a margin, nothing is left to wait for. Kept
        // referenced: an empty event loop would end the process normally, which waits for any stuck thread.
        const backstop = setTimeout(() => {
          server.log.error({ signal, shutdownGraceMs: config.limits.shutdownGraceMs }, 'the key server did not stop within its grace: exiting anyway');
          exitBySignal(server.log, signal);
        }, config.limits.shutdownGraceMs + STOP_MARGIN_MS);
        void server.close().then((result) => {
          if (result.threadsLeftInToken > 0) return exitBySignal(server.log, signal);
          clearTimeout(backstop);
          resolve(signal);
        });
      };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
    server.log.debug({ signal }, 'stopped');
    return 0;
  },
};

const PING_USAGE = `Usage: keyedge ping [--config FILE | --socket PATH] [--count N]

Checks that a key server answers on its unix socket: sends N pings (default 3)
and prints each round trip, one line each. (It lists no keys: the protocol has
no listing; \`keyedge key list\` shows the token's.)

Options:
  --config FILE   read the socket path from this key server config
  --socket PATH   the key server's unix socket (default: from the config)
  --count N       pings to send
  --help          this text
`;

export const pingCommand: Command = {
  name: 'ping',
  async run(argv) {
    const { values } = parseCommandArgs(argv, { config: { type: 'string' }, socket: { type: 'string' }, count: { type: 'string' } }, PING_USAGE);
    if (values.help) {
      process.stdout.write(PING_USAGE);
      return 0;
    }
    const count = Number(values.count ?? 3);
    if (!Number.isInteger(count) || count < 1 || count > 1000) throw new UsageError('--count must be an integer from 1 to 1000');
    const socket = values.socket ?? loadKeyserverConfig(values.config).listen.unix?.path;
    if (socket === undefined) throw new UsageError('the config has no unix listener; give --socket');
    const client = await KeyserverClient.connect({ unixPath: socket });
    try {
      for (let i = 0; i < count; i++) {
        const started = process.hrtime.bigint();
        await client.ping(Buffer.from(`keyedge ping ${i}`));
        process.stdout.write(`pong from ${socket}: ${(Number(process.hrtime.bigint() - started) / 1e3).toFixed(0)} µs\n`);
      }
    } finally {
      client.close();
    }
    return 0;
  },
};
