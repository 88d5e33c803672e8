/**
 * The queue of signs waiting for a signing thread (sign-queue.ts), on its own:
 * the order it gives items in. What it does for a key server's clients is in
 * keyserver-fair.test.ts.
 */
import { expect, it } from 'vitest';
import { FairQueue } from '../keyserver/token/sign-queue.js';

const A = { name: 'a' };
const B = { name: 'b' };
const C = { name: 'c' };

it('takes one item per flow in turn, each flow in its own order, and forgets a flow once it is empty', () => {
  const queue = new FairQueue<string>();
  for (let i = 1; i <= 5; i++) queue.push(A, `a${i}`);
  queue.push(B, 'b1');
  queue.push(B, 'b2');
  expect(queue.size).toBe(7);
  expect([queue.shift(), queue.shift(), queue.shift()]).toEqual(['a1', 'b1', 'a2']);
  // A newcomer joins at the back of the turns: behind B, whose turn is next, not behind A's backlog.
  queue.push(C, 'c1');
  expect(queue.takeAll()).toEqual(['b2', 'a3', 'c1', 'a4', 'a5']);
  expect(queue.size).toBe(0);
  expect(queue.flows).toBe(0);
  expect(queue.shift()).toBeUndefined();
});

it('an item put back goes to the head of its flow, and a flow with nothing queued joins the turns at the back', () => {
  const queue = new FairQueue<string>();
  queue.push(A, 'a1');
  queue.push(A, 'a2');
  queue.push(B, 'b1');
  expect(queue.shift()).toBe('a1');
  queue.unshift(A, 'a1 again');
  queue.unshift(C, 'c1 again');
  expect(queue.takeAll()).toEqual(['b1', 'a1 again', 'c1 again', 'a2']);
});

it('a long flow taken from the front keeps its order through the compactions of its array', () => {
  const queue = new FairQueue<number>();
  const taken: number[] = [];
  let next = 0;
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 7; i++) queue.push(A, next++);
    for (let i = 0; i < 5; i++) taken.push(queue.shift()!);
  }
  taken.push(...queue.takeAll());
  expect(taken).toEqual(Array.from({ length: next }, (_, i) => i));
});

it("a turn drops every unwanted item at its flow's head, keeps the rest in order, and passes on from a flow left empty", () => {
  const queue = new FairQueue<string>();
  for (const item of ['a1 x', 'a2 x', 'a3', 'a4 x', 'a5']) queue.push(A, item);
  queue.push(B, 'b1 x');
  queue.push(C, 'c1');
  const dropped: string[] = [];
  const drop = (item: string): boolean => item.endsWith(' x') && dropped.push(item) > 0;
  // A's unwanted head goes in one turn (not one a turn); B, with nothing wanted, gives its turn to C.
  expect([queue.shift(drop), queue.shift(drop)]).toEqual(['a3', 'c1']);
  expect(dropped).toEqual(['a1 x', 'a2 x', 'b1 x']);
  expect(queue.flows).toBe(1);
  expect(queue.takeAll()).toEqual(['a4 x', 'a5']);
  expect(queue.size).toBe(0);
});

it('a take walks no collection of the flows: it costs the same with 50,000 connections waiting as with one', () => {
  // Before: the turns were a Map's order, each take finding the first flow by iterating the Map, then deleting it and
  // setting it again at the back. V8 keeps a deleted entry's slot until its table is rebuilt and iterates from the
  // first slot, so each take stepped over the slots of the takes before it, up to about as many as there are flows
  // (measured on Node 20: 0.4 µs a take with 1,000 flows waiting, 35 µs with 50,000). Counted here, not timed: the
  // iterations a take starts over a Map.
  const iterate = Object.getOwnPropertyDescriptor(Map.prototype, Symbol.iterator)!;
  const entries = Map.prototype.entries;
  let walks = 0;
  const queue = new FairQueue<number>();
  const keys = Array.from({ length: 50_000 }, () => ({}));
  for (let i = 0; i < 2 * keys.length; i++) queue.push(keys[i % keys.length]!, i);
  const taken: number[] = [];
  Object.defineProperty(Map.prototype, Symbol.iterator, {
    ...iterate,
    value: function (this: Map<unknown, unknown>) {
      walks++;
      return entries.call(this);
    },
  });
  try {
    for (let i = 0; i < 1_000; i++) taken.push(queue.shift()!);
  } finally {
    Object.defineProperty(Map.prototype, Symbol.iterator, iterate);
  }
  expect(walks).toBe(0);
  // Still in turns: one item of each flow, the flows in the order they came.
  expect(taken).toEqual(Array.from({ length: 1_000 }, (_, i) => i));
});
