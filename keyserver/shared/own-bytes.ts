/**
 * Small byte strings that must not hold on to the memory they came from.
 *
 * A Buffer is a view: a 32-byte digest decoded from a socket read keeps the
 * whole read (up to 64 KiB) alive for as long as it is referenced, and one
 * posted to a worker thread copies its whole ArrayBuffer, since structured
 * clone copies a typed array's buffer, not its view (HTML, "StructuredSerialize"
 * of an ArrayBufferView). Node's pool does the same at a smaller scale:
 * `Buffer.from(bytes)`, `Buffer.concat` and `Buffer.allocUnsafe` under 4 KiB
 * are views of a shared 8 KiB slab. What is kept past the read, or posted,
 * is made here: an ArrayBuffer of exactly its size. Its cost is the
 * allocation (about 1 µs on Node 20, the copy of 32-83 bytes nothing), well
 * under a sign's, and a batch of 8 such inputs posts in a quarter of the time
 * of 8 pooled ones. Not `Buffer.copyBytesFrom`: on Node 20 it answers from
 * the pool too.
 *
 * Contract: `ownBytes(bytes)` returns a fresh Buffer holding them, on an
 * ArrayBuffer of its own of exactly that length (offset 0); `ownsItsBytes(bytes)`
 * says whether `bytes` already is such.
 */

/** `bytes` on a fresh ArrayBuffer of exactly their length (never Node's pool). */
export function ownBytes(bytes: Uint8Array): Buffer {
  const out = new Uint8Array(bytes.byteLength);
  out.set(bytes);
  return Buffer.from(out.buffer, 0, bytes.byteLength);
}

/** Whether `bytes` is the whole of its ArrayBuffer: keeping or posting it carries nothing else. */
export function ownsItsBytes(bytes: Uint8Array): boolean {
  return bytes.byteOffset === 0 && bytes.buffer.byteLength === bytes.byteLength;
}
