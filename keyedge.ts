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
import { readFileSync } from 'node:fs';
import { KeyedgeError } from './keyserver/shared/errors.js';
import { keyCommand } from './keyserver/cli/key-commands.js';
import { keyserverCommand, pingCommand } from './keyserver/cli/keyserver-commands.js';
import { proxyCommand } from './proxy/cli.js';
import { demoOriginCommand } from './proxy/demo-origin.js';
import { certCommand } from './proxy/certs/cli.js';
import type { Command } from './keyserver/shared/command.js';

const COMMANDS: readonly Command[] = [keyserverCommand, keyCommand, proxyCommand, certCommand, pingCommand, demoOriginCommand];

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
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

export async function run(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  if (name === '--version') {
    process.stdout.write(`${version()}\n`);
    return 0;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (command === undefined) {
    process.stderr.write(`keyedge: KEYEDGE_ERR_USAGE: unknown command '${name}'\n\n${usage()}`);
    return 2;
  }
  try {
    return await command.run(rest);
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
