// The body reader behind exact forwarding (src/schemas/json-text.ts): numbers keep the client's
// spelling, duplicate and `__proto__` keys are refused, nesting is bounded, and no problem
// message echoes a value.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  MAX_BODY_DEPTH,
  memberValueSpan,
  parseJsonText,
  structuralProblem,
} from '../src/schemas/json-text.ts';

function parsed(text: string): unknown {
  const result = parseJsonText(text);
  if (!result.ok) throw new Error(`expected ${text} to parse, got: ${result.problem}`);
  return result.value;
}

function problemOf(text: string): string {
  const result = parseJsonText(text);
  if (result.ok) throw new Error(`expected ${text} to be refused`);
  return result.problem;
}

const nested = (levels: number) => `${'['.repeat(levels)}${']'.repeat(levels)}`;

describe('numbers come back out exactly as the client wrote them', () => {
  it.each([
    ['a 65-bit integer', '18446744073709551617'],
    ['an underflow to zero', '1e-400'],
    ['an overflow to Infinity', '1e400'],
    ['negative zero', '-0'],
    ['a trailing zero', '1.0'],
    ['an upper-case exponent', '1E5'],
    ['an explicit plus exponent', '1e+5'],
    ['more digits than a double holds', '0.30000000000000000001'],
    ['a plain integer', '42'],
    ['a plain fraction', '0.1'],
  ])('%s (%s), at the top level and nested', (_name, number) => {
    const text = `{"a":${number},"b":[${number},{"c":${number}}]}`;
    expect(JSON.stringify(parsed(text))).toBe(text);
  });

  it('keeps plain values plain (only numbers that would change are wrapped)', () => {
    const value = parsed('{"n":42,"f":0.5,"s":"1.0","t":true,"z":null}') as Record<string, unknown>;
    expect(value).toEqual({ n: 42, f: 0.5, s: '1.0', t: true, z: null });
  });

  it('property: any JSON number text survives parse and stringify unchanged', () => {
    const digits = fc.stringMatching(/^(0|[1-9][0-9]{0,40})$/);
    const number = fc
      .tuple(
        fc.constantFrom('', '-'),
        digits,
        fc.option(fc.stringMatching(/^[0-9]{1,30}$/), { nil: undefined }),
        fc.option(
          fc.tuple(
            fc.constantFrom('e', 'E'),
            fc.constantFrom('', '+', '-'),
            fc.integer({ min: 0, max: 999 }),
          ),
          { nil: undefined },
        ),
      )
      .map(
        ([sign, int, frac, exp]) =>
          `${sign}${int}${frac === undefined ? '' : `.${frac}`}${exp === undefined ? '' : `${exp[0]}${exp[1]}${exp[2]}`}`,
      );
    fc.assert(
      fc.property(number, (n) => {
        const text = `{"x":${n},"y":[${n}]}`;
        expect(JSON.stringify(parsed(text))).toBe(text);
      }),
      { numRuns: 500 },
    );
  });
});

describe('refused: the validated value must be the forwarded one', () => {
  it.each([
    ['at the top level', '{"a":1,"a":2}', 'a'],
    ['nested in an object', '{"x":{"k":1,"k":2}}', 'k'],
    ['inside an array of objects', '{"x":[{"k":1},{"k":1,"k":1}]}', 'k'],
    ['spelled with an escape', '{"\\u0061":1,"a":2}', 'a'],
    ['after a string holding an escaped quote', '{"a":"\\"","a":1}', 'a'],
    ['after a string ending in a backslash', '{"s":"x\\\\","b":1,"b":2}', 'b'],
  ])('a duplicate key %s', (_name, text, key) => {
    expect(problemOf(text)).toBe(`request body holds the key "${key}" twice`);
  });

  it('allows the same key in sibling objects', () => {
    expect(parsed('{"x":[{"k":1},{"k":2}],"y":{"k":3}}')).toEqual({
      x: [{ k: 1 }, { k: 2 }],
      y: { k: 3 },
    });
  });

  it.each([
    ['at the top level', '{"__proto__":{"polluted":true}}'],
    ['nested', '{"x":{"__proto__":{"polluted":true}}}'],
    ['spelled with an escape', '{"\\u005f_proto__":{"polluted":true}}'],
  ])('a __proto__ key %s', (_name, text) => {
    expect(problemOf(text)).toBe('request body holds a "__proto__" key');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('allows "__proto__" as a value and "constructor" as a key', () => {
    expect(parsed('{"a":"__proto__","constructor":{"prototype":1}}')).toEqual({
      a: '__proto__',
      constructor: { prototype: 1 },
    });
  });

  it(`nesting deeper than ${MAX_BODY_DEPTH} levels (the body counts as one)`, () => {
    expect(parsed(nested(MAX_BODY_DEPTH))).toBeDefined();
    expect(problemOf(nested(MAX_BODY_DEPTH + 1))).toBe(
      `request body nests objects or arrays deeper than ${MAX_BODY_DEPTH} levels`,
    );
    expect(
      problemOf(`{"a":${'{"b":'.repeat(MAX_BODY_DEPTH)}1${'}'.repeat(MAX_BODY_DEPTH)}}`),
    ).toMatch(/deeper than 64 levels/);
  });

  it('walks a million levels without exhausting the stack', () => {
    expect(structuralProblem(nested(1_000_000))).toMatch(/deeper than/);
  });

  it('counts brackets inside strings as text', () => {
    expect(parsed(`{"s":"${'['.repeat(1000)}"}`)).toEqual({ s: '['.repeat(1000) });
  });

  it.each([
    ['truncated', '{"a":'],
    ['a trailing comma', '{"a":1,}'],
    ['a missing colon', '{"a" "b"}'],
    ['single quotes', "{'a':1}"],
    ['NaN', '{"a":NaN}'],
    ['a leading zero', '{"a":01}'],
    ['two values', '{} {}'],
    ['nothing', ''],
  ])('invalid JSON: %s', (_name, text) => {
    expect(problemOf(text)).toBe('request body is not valid JSON');
  });

  it('never echoes a value, only names a key', () => {
    const secret = 'sk-live-0123456789abcdef';
    for (const text of [
      `{"a":"${secret}","a":1}`,
      `{"a":"${secret}",`,
      `{"a":"${secret}","__proto__":1}`,
      `{"a":"${secret}","b":${nested(100)}}`,
    ]) {
      expect(problemOf(text)).not.toContain(secret);
    }
  });

  it('cuts a long duplicate key to 64 characters in the message', () => {
    const key = 'k'.repeat(1000);
    expect(problemOf(`{"${key}":1,"${key}":2}`)).toBe(
      `request body holds the key "${'k'.repeat(64)}" twice`,
    );
  });
});

describe('memberValueSpan: where a top-level member value sits in the bytes', () => {
  const span = (text: string, name = 'queries') => {
    const bytes = Buffer.from(text);
    const found = memberValueSpan(bytes, name);
    return found && bytes.toString('utf8', found[0], found[1]);
  };

  it.each([
    ['first member', '{"queries":["a"],"x":1}', '["a"]'],
    ['last member, spaces around', '{ "x" : 1 , "queries" :  [ "a", "b" ]  }', '[ "a", "b" ]'],
    ['after a nested "queries" key', '{"o":{"queries":[0]},"queries":["top"]}', '["top"]'],
    ['after a string holding quotes and braces', '{"s":"\\"}{,","queries":["a"]}', '["a"]'],
    ['a key written with an escape', '{"qu\\u0065ries":["a"]}', '["a"]'],
    ['after multi-byte text', '{"q":"é 🚌 ，","queries":["a"]}', '["a"]'],
    ['a scalar value', '{"queries":null}', 'null'],
  ])('%s', (_name, text, value) => {
    expect(span(text)).toBe(value);
  });

  it('is undefined when the member is absent, or only nested', () => {
    expect(span('{"x":1}')).toBeUndefined();
    expect(span('{"o":{"queries":[1]}}')).toBeUndefined();
  });
});
