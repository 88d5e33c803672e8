/**
 * Which files this process holds open, read from /proc/self/fd, for tests
 * of what a worker releases: a descriptor closed by a FinalizationRegistry
 * (serving/pack.ts) goes only once what held it is collected, so the check
 * runs full garbage collections until it does.
 */
import { readdirSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import v8 from 'node:v8';
import vm from 'node:vm';

/** Every path this process has open (one deleted since reads "<path> (deleted)"). */
export function openFiles(): string[] {
  return readdirSync('/proc/self/fd').flatMap((fd) => {
    try {
      return [readlinkSync(`/proc/self/fd/${fd}`)];
    } catch {
      return []; // closed meanwhile (readdir's own descriptor)
    }
  });
}

/** Those of `files` still open after full garbage collections (a turn after each, for finalizers), up to about a second of them. */
export async function openAfterGc(files: readonly string[]): Promise<string[]> {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  let open = [...files];
  for (let i = 0; i < 20 && open.length > 0; i++) {
    gc();
    await sleep(50);
    const now = openFiles();
    open = open.filter((file) => now.some((path) => path.startsWith(file)));
  }
  return open;
}
