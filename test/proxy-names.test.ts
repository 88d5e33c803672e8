import { describe, expect, it } from 'vitest';
import { buildNameIndex, nameCovers, normaliseName, selectByName } from '../proxy/tls/names.js';

const index = buildNameIndex([
  { names: ['shop.example', 'www.shop.example'], value: 'shop' },
  { names: ['*.shop.example'], value: 'shop-wild' },
  { names: ['*.example'], value: 'example-wild' },
  { names: ['API.Other.Example.'], value: 'api' },
]);

describe('selectByName', () => {
  it.each([
    ['shop.example', 'shop', 'exact'],
    ['www.shop.example', 'shop', 'exact'],
    ['a.shop.example', 'shop-wild', 'wildcard'],
    ['A.SHOP.EXAMPLE.', 'shop-wild', 'wildcard'],
    ['x.example', 'example-wild', 'wildcard'],
    ['api.other.example', 'api', 'exact'],
    // a wildcard covers one label only (RFC 6125 §6.4.3)
    ['a.b.shop.example', 'default', 'default'],
    ['example', 'default', 'default'],
    ['unknown.test', 'default', 'default'],
    [undefined, 'default', 'default'],
    ['', 'default', 'default'],
  ])('%s → %s (%s)', (name, value, match) => {
    expect(selectByName(index, name, 'default')).toEqual({ value, match });
  });

  it('returns undefined without a default', () => {
    expect(selectByName(index, 'unknown.test', undefined)).toBeUndefined();
    expect(selectByName(index, undefined, undefined)).toBeUndefined();
  });
});

describe('buildNameIndex', () => {
  it('keeps the first claimant of a name and reports the clash', () => {
    const clashes: string[] = [];
    const idx = buildNameIndex(
      [
        { names: ['a.example'], value: 1 },
        { names: ['A.example', 'b.example'], value: 2 },
      ],
      (name, kept, dropped) => clashes.push(`${name}:${kept}>${dropped}`),
    );
    expect(selectByName(idx, 'a.example', undefined)?.value).toBe(1);
    expect(selectByName(idx, 'b.example', undefined)?.value).toBe(2);
    expect(clashes).toEqual(['a.example:1>2']);
  });
});

describe('nameCovers', () => {
  it.each([
    ['*.a.example', 'x.a.example', true],
    ['*.a.example', 'a.example', false],
    ['*.a.example', 'y.x.a.example', false],
    ['a.example', 'A.Example.', true],
    ['a.example', 'b.example', false],
  ])('%s covers %s: %s', (pattern, name, expected) => {
    expect(nameCovers(pattern, name)).toBe(expected);
  });

  it('normalises names', () => {
    expect(normaliseName('Foo.Example.')).toBe('foo.example');
    expect(normaliseName('.')).toBeUndefined();
  });
});
