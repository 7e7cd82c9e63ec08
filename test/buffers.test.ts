// Bytes held while an upstream call runs own their memory: a small Buffer is otherwise a view
// into Node's shared 64 KiB pool slab, and holding it for a 30 s call holds the whole slab.
import { describe, expect, it, vi } from 'vitest';
import { concatOwned, owned } from '../src/buffers.ts';
import { gatewayTest, postJson, validBody } from './helpers.ts';

const ownsItsMemory = (bytes: Buffer) =>
  bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;

describe('owned', () => {
  it('copies a view into a pool slab into a buffer of its own, with the same bytes', () => {
    const pooled = Buffer.concat([Buffer.from('{"a":'), Buffer.from('1}')]);
    expect(ownsItsMemory(pooled)).toBe(false);
    const copy = owned(pooled);
    expect(ownsItsMemory(copy)).toBe(true);
    expect(copy.equals(pooled)).toBe(true);
  });

  it('keeps a buffer that already owns its memory as it is', () => {
    const big = Buffer.allocUnsafeSlow(70_000).fill(1);
    expect(owned(big)).toBe(big);
  });

  it('concatOwned joins the parts into a buffer of its own', () => {
    const joined = concatOwned([Buffer.from('ab'), Buffer.from(''), Buffer.from('cd')]);
    expect(joined.toString()).toBe('abcd');
    expect(ownsItsMemory(joined)).toBe(true);
  });
});

describe('the bytes a call holds', () => {
  gatewayTest.for([
    ['as the client sent them', validBody()],
    [
      'rewritten (a data: prefix dropped)',
      validBody({ queries: [`data:image/png;base64,${validBody().queries[0]}`] }),
    ],
  ])('own their memory: %s', async ([, body], { gateway: g }) => {
    const call = vi.spyOn(g.app.upstream, 'call');
    expect((await postJson(g, { body })).statusCode).toBe(200);
    const forwarded = call.mock.calls[0]?.[0].body;
    expect(forwarded && forwarded.byteLength < 32 * 1024).toBe(true);
    expect(forwarded && ownsItsMemory(forwarded)).toBe(true);
  });
});
