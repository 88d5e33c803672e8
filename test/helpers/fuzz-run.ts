/**
 * The loop of a seeded fuzz test (abuse-fuzz-h1, abuse-fuzz-origin): its
 * cases one at a time, so a long run takes one core at most and each case's
 * breaks are printed as they are found (a long run shows them before it ends).
 */
export async function runFuzzCases(first: number, count: number, runCase: (c: number) => Promise<string[]>): Promise<string[]> {
  const breaks: string[] = [];
  for (let c = first; c < first + count; c++) {
    const found = await runCase(c);
    for (const b of found) console.error(b);
    breaks.push(...found);
  }
  return breaks;
}
