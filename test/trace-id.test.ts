import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { traceIdFor } from '../src/plugins/request-context.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

const requestWith = (headers: Record<string, string | string[] | undefined>) =>
  ({ headers }) as unknown as IncomingMessage;

const traceIdOf = (value: string | string[] | undefined) =>
  traceIdFor(requestWith(value === undefined ? {} : { 'x-request-id': value }));

describe('traceIdFor', () => {
  it.each([
    ['a UUID', '3f2b8c1e-9a4d-4c7e-8b1a-2d3e4f5a6b7c'],
    ['a single character', 'a'],
    ['every allowed symbol', 'Ab0.b_c:d-e'],
    ['exactly 128 characters', 'x'.repeat(128)],
    ['a mixed 128-character id', 'aZ9._:-'.repeat(18).concat('ab').slice(0, 128)],
  ])('honours %s', (_name, id) => {
    expect(id.length).toBeLessThanOrEqual(128);
    expect(traceIdOf(id)).toBe(id);
  });

  it.each([
    ['absent', undefined],
    ['129 characters', 'x'.repeat(129)],
    ['empty', ''],
    ['a space inside', 'abc def'],
    ['a leading space', ' abc'],
    ['CR/LF', 'abc\r\ndef'],
    ['a trailing LF', 'abc\n'],
    ['non-ASCII', 'trace-é'],
    ['an emoji', 'trace-🚌'],
    ['a slash', 'a/b'],
    ['a comma-joined duplicate', 'one, two'],
    ['an array (duplicate header)', ['abc', 'def']],
    ['a one-element array', ['abc']],
  ])('replaces %s with a fresh UUID', (_name, value) => {
    const id = traceIdOf(value);
    expect(id).toMatch(UUID);
    if (typeof value === 'string') expect(id).not.toBe(value);
  });

  it('generates a different id each time', () => {
    const ids = new Set(Array.from({ length: 50 }, () => traceIdOf(undefined)));
    expect(ids.size).toBe(50);
    expect(traceIdOf('bad id')).not.toBe(traceIdOf('bad id'));
  });

  it('reads only x-request-id', () => {
    expect(traceIdFor(requestWith({ 'x-trace-id': 'abc', 'x-correlation-id': 'abc' }))).toMatch(
      UUID,
    );
  });
});
