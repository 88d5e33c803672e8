/**
 * A path (or any string) written as one POSIX shell word, for a command the
 * CLI prints for an operator to paste: `shred -u <file>`. A name made of
 * letters, digits and `/._-+:@%,=` is printed as is; anything else is
 * single-quoted (POSIX.1-2017 XCU §2.2.2: nothing inside single quotes is
 * special), an embedded `'` written as `'\''`.
 */
const PLAIN = /^[A-Za-z0-9/._+:@%,=-]+$/;

export function shellWord(value: string): string {
  return PLAIN.test(value) ? value : `'${value.replaceAll("'", "'\\''")}'`;
}
