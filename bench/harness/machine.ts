/**
 * What a benchmark ran on, for the results file: the figures mean little without the CPU, the core count, the runtime
 * and the crypto library. Everything here is cheap; anything that cannot be read is left undefined rather than failing
 * the run.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';

export interface MachineInfo {
  readonly cpuModel: string;
  /** os.availableParallelism(): the cores this process may use. */
  readonly cores: number;
  readonly logicalCpus: number;
  readonly totalMemoryMB: number;
  readonly kernel: string;
  readonly loadAverageAtStart: readonly number[];
  readonly node: string;
  readonly v8: string;
  readonly openssl: string;
  readonly uvThreadpoolSize: string | undefined;
  readonly softhsm2: string | undefined;
  readonly commandLine: string;
  readonly startedAt: string;
}

export function describeMachine(): MachineInfo {
  return {
    cpuModel: cpuModel(),
    cores: os.availableParallelism(),
    logicalCpus: os.cpus().length,
    totalMemoryMB: Math.round(os.totalmem() / 2 ** 20),
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    loadAverageAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100),
    node: process.version,
    v8: process.versions.v8,
    openssl: process.versions.openssl,
    uvThreadpoolSize: process.env.UV_THREADPOOL_SIZE,
    softhsm2: softHsmVersion(),
    commandLine: [process.argv0, ...process.execArgv, ...process.argv.slice(1)].map(shellQuote).join(' '),
    startedAt: new Date().toISOString(),
  };
}

function cpuModel(): string {
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('model name'));
    if (line !== undefined) return line.slice(line.indexOf(':') + 1).trim();
  } catch {
    // not Linux: fall through
  }
  return os.cpus()[0]?.model ?? 'unknown';
}

/** `softhsm2-util --version`, when the tool is on PATH. */
export function softHsmVersion(): string | undefined {
  try {
    return execFileSync('softhsm2-util', ['--version'], { encoding: 'utf8', timeout: 2000, stdio: ['ignore', 'pipe', 'ignore'] }).trim() || undefined;
  } catch {
    return undefined;
  }
}

function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`;
}
