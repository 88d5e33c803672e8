/**
 * `keyedge`: the product's one command line. Each subcommand lives in its own
 * module and registers here with its help text, so `keyedge --help` and
 * `keyedge <cmd> --help` are generated from the same table that dispatches.
 *
 * Output for the operator goes to stdout; failures go to stderr as
 * `keyedge: <CODE>: <message>` with exit status 1 (2 for usage errors).
 *
 * This is the top of the one-way layers (README, "Layout"): the only file
 * that imports both daemons' commands. Nothing in config/, keyserver/ or
 * proxy/ imports it (test/layering.test.ts).
 */
import { existsSync, readFileSync } from 'node:fs';
import { type Command, doneSoFar } from './keyserver/shared/command.js';
import { KeyedgeError } from './keyserver/shared/errors.js';

/**
 * Each command by name, with its one-line summary, and its module, loaded only
 * when it runs: a proxy worker (node:cluster forks it as `keyedge proxy`) and
 * each `keyedge key` run load their own command only. Loading all six took
 * 0.5–0.7 s of CPU at every start, the x509, PKCS#11 and config schema code of
 * commands not run.
 */
interface CommandEntry {
  readonly name: string;
  readonly summary: string;
  load(): Promise<Command>;
}

const COMMANDS: readonly CommandEntry[] = [
  {
    name: 'keyserver',
    summary: 'run the key server (PKCS#11 keyless signing daemon)',
    load: async () => (await import('./keyserver/cli/keyserver-commands.js')).keyserverCommand,
  },
  {
    name: 'key',
    summary: 'generate, import, list, delete keys in the token; make CSRs signed inside it',
    // A delete asks the proxy's certificates whether they use the key (keyserver/cli/key-users.ts): loaded then only.
    load: async () =>
      (await import('./keyserver/cli/key-commands.js')).keyCommand(async (key, proxyConfig) =>
        (await import('./proxy/certs/key-users.js')).findKeyUsers(key, proxyConfig),
      ),
  },
  {
    name: 'proxy',
    summary: 'run the TLS edge (keyless TLS termination and routing to origins)',
    load: async () => (await import('./proxy/cli.js')).proxyCommand,
  },
  {
    name: 'cert',
    summary: 'add, replace, list, show, remove certificates in the proxy certificate store; issue and renew them over ACME',
    load: async () => (await import('./proxy/certs/cli.js')).certCommand,
  },
  {
    name: 'ping',
    summary: 'check that a running key server answers',
    load: async () => (await import('./keyserver/cli/keyserver-commands.js')).pingCommand,
  },
  {
    name: 'demo-origin',
    summary: 'run a demo HTTP origin (for trying keyedge and for benchmarks)',
    load: async () => (await import('./proxy/demo-origin.js')).demoOriginCommand,
  },
];

function version(): string {
  // dist/keyedge.js is one level below the root, dist/bundle/keyedge.js (package.json's `bundle`) two.
  const file = ['../package.json', '../../package.json'].map((rel) => new URL(rel, import.meta.url)).find((url) => existsSync(url));
  if (file === undefined) throw new KeyedgeError('KEYEDGE_ERR_SETUP', "keyedge's package.json is not beside its dist/ directory");
  const pkg = JSON.parse(readFileSync(file, 'utf8')) as { version: string };
  return pkg.version;
}

function usage(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    'Usage: keyedge <command> [options]',
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    "Run `keyedge <command> --help` for a command's options.",
    'Options: --help, --version',
    '',
  ].join('\n');
}

/** The commands that run until stopped: their output is logs, and a stdout gone is theirs (and their supervisor's) to handle. */
const DAEMONS: ReadonlySet<string> = new Set(['keyserver', 'proxy', 'demo-origin']);

let quietOnClosedStdout = false;

/**
 * A reader that went away (`keyedge cert list | head -1`): the rest of the output is not wanted, and a command's work
 * is done by the time it writes (each writes after it acts). Unhandled, Node's EPIPE 'error' event printed its stack
 * trace and exited 1. Quiet, and 0: the reader chose to stop.
 */
function stopQuietlyOnClosedStdout(): void {
  if (quietOnClosedStdout) return;
  quietOnClosedStdout = true;
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    // Any other write failure (ENOSPC under `> file` on a full disk, EIO) printed Node's stack: said as the command's
    // failure, with what it had done (a key generated is in the token: its key id is on stderr, not lost with stdout).
    const done = doneSoFar();
    process.stderr.write(`keyedge: KEYEDGE_ERR_SETUP: cannot write to standard output: ${err.code ?? err.message}${done === undefined ? '' : `; ${done}`}\n`);
    process.exit(1);
  });
}

export async function run(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || !DAEMONS.has(name)) stopQuietlyOnClosedStdout();
  // No command is a usage error like an unknown one: on stderr, so a script's `$(keyedge)` does not take the help for output.
  if (name === undefined) {
    process.stderr.write(`keyedge: KEYEDGE_ERR_USAGE: missing command\n\n${usage()}`);
    return 2;
  }
  if (name === '--help' || name === '-h' || name === 'help') {
    // `keyedge help cert` is `keyedge cert --help` (as git's and npm's help take a command), not the list of commands.
    const topic = name === 'help' && rest.length === 1 ? COMMANDS.find((c) => c.name === rest[0]) : undefined;
    if (topic !== undefined) return run([topic.name, '--help']);
    process.stdout.write(usage());
    return 0;
  }
  if (name === '--version') {
    process.stdout.write(`${version()}\n`);
    return 0;
  }
  const entry = COMMANDS.find((c) => c.name === name);
  if (entry === undefined) {
    process.stderr.write(`keyedge: KEYEDGE_ERR_USAGE: unknown command '${name}'\n\n${usage()}`);
    return 2;
  }
  try {
    return await (await entry.load()).run(rest);
  } catch (err) {
    return reportFailure(err);
  }
}

export function reportFailure(err: unknown): number {
  if (err instanceof KeyedgeError) {
    let message = `keyedge: ${err.code}: ${err.message}\n`;
    // The cause chain helps with token and TLS faults; it never holds secrets (keyserver/shared/errors.ts).
    for (let cause = err.cause; cause instanceof Error; cause = cause.cause) {
      if (!message.includes(cause.message)) message += `  caused by: ${cause.message.split('\n')[0]}\n`;
    }
    process.stderr.write(message);
    return err.code === 'KEYEDGE_ERR_USAGE' ? 2 : 1;
  }
  process.stderr.write(`keyedge: unexpected failure: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return 1;
}
