// Secrets by value: configured upstream tokens that match no secret-like pattern (short, with
// punctuation, a dictionary word, JSON-escaped characters, a slash) and the client's own key,
// echoed back by the upstream in a JSON error that passes through, an HTML 200 (malformed, logged
// as an excerpt) and a 5xx body. None may reach the client or a log line: each is replaced by
// [token:<8 hex>] / [key:<8 hex>]. Masking by pattern stays as the second line.
import { describe, expect, it } from 'vitest';
import { fingerprint } from '../dev/fake-upstream.ts';
import { SecretMask } from '../src/upstream/secrets.ts';
import { CLIENT_KEY, gatewayTest, postJson, type TestGateway, validBody } from './helpers.ts';

// Each test starts a gateway and a fake upstream: seconds on a loaded machine, not vitest's 5 s.
/** Tokens no pattern would catch; each is valid in ACEDATA_API_TOKEN (printable, no spaces). */
const SHORT = 'tok.en-1';
const WORD = 'sunflower';
const QUOTED = 'se"cr\\et';
const SLASHED = 'ab/cd+ef=';
const TOKENS = [SHORT, WORD, QUOTED, SLASHED];

const masked = (token: string) => `[token:${fingerprint(token)}]`;
const maskedKey = `[key:${fingerprint(CLIENT_KEY)}]`;

/** Every way a secret could be written in a response body or a (JSON) log line. */
function spellings(secret: string): string[] {
  const json = JSON.stringify(secret).slice(1, -1);
  return [
    ...new Set([secret, json, JSON.stringify(json).slice(1, -1), json.replaceAll('/', '\\/')]),
  ];
}

/** No secret, in any spelling, in the text. */
function expectClean(text: string, what: string): void {
  for (const secret of [...TOKENS, CLIENT_KEY]) {
    for (const spelling of spellings(secret)) {
      expect(text.includes(spelling), `${what} holds ${JSON.stringify(spelling)}`).toBe(false);
    }
  }
}

const echo = `tokens ${SHORT}, ${WORD}, ${QUOTED} and ${SLASHED}; your key ${CLIENT_KEY}`;
const echoMasked = `tokens ${masked(SHORT)}, ${masked(WORD)}, ${masked(QUOTED)} and ${masked(SLASHED)}; your key ${maskedKey}`;

describe('echoed by the upstream, through the gateway', () => {
  gatewayTest.override('gatewaySettings', {
    env: { ACEDATA_API_TOKEN: TOKENS.join(','), UPSTREAM_MAX_RETRIES: '0' },
    fakeOptions: { tokens: TOKENS },
  });

  const send = (g: TestGateway) =>
    postJson(g, { body: validBody({ question: `q ${Math.random()}` }) });

  async function expectNothingLeaked(g: TestGateway, body: string): Promise<void> {
    expectClean(body, 'the response');
    expectClean(g.logLines.join('\n'), 'the log');
    expectClean((await g.admin.inject({ url: '/metrics' })).body, '/metrics');
  }

  gatewayTest('in a JSON error that passes through', async ({ gateway: g }) => {
    g.fake.enqueueFaults({ kind: 'status', status: 400, code: 'bad_request', message: echo });
    const res = await send(g);
    expect(res.statusCode).toBe(400);
    expect(res.json()).toMatchObject({
      success: false,
      error: { code: 'bad_request', message: echoMasked },
    });
    expect(g.fake.callCount()).toBe(1);
    await expectNothingLeaked(g, res.body);
  });

  gatewayTest('in a 5xx body that passes through', async ({ gateway: g }) => {
    g.fake.enqueueFaults({ kind: 'status', status: 500, code: 'api_error', message: echo });
    const res = await send(g);
    expect(res.statusCode).toBe(500);
    expect(res.json().error).toEqual({ code: 'api_error', message: echoMasked });
    await expectNothingLeaked(g, res.body);
  });

  gatewayTest(
    'in an HTML 200: 502 for the client, a masked excerpt in the log',
    async ({ gateway: g }) => {
      g.fake.enqueueFaults({ kind: 'garbage', status: 200, body: `<html><p>${echo}</p></html>` });
      const res = await send(g);
      expect(res.statusCode).toBe(502);
      expect(res.json().error.code).toBe('upstream_error');
      const logged = g.logs().find((line) => typeof line.upstream_excerpt === 'string');
      expect(logged?.upstream_excerpt).toContain(
        `<html><p>tokens ${masked(SHORT)}, ${masked(WORD)}`,
      );
      expect(logged?.upstream_excerpt).toContain(masked(SLASHED));
      await expectNothingLeaked(g, res.body);
    },
  );

  gatewayTest('in JSON written with escaped slashes (PHP style)', async ({ gateway: g }) => {
    const body = JSON.stringify({
      success: false,
      error: { code: 'bad_request', message: `token ${SLASHED}` },
    }).replaceAll('/', '\\/');
    expect(body).toContain('ab\\/cd+ef=');
    g.fake.enqueueFaults({ kind: 'garbage', status: 400, body });
    const res = await send(g);
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toBe(`token ${masked(SLASHED)}`);
    await expectNothingLeaked(g, res.body);
  });

  gatewayTest(
    'pattern masking stays as a second line for secret-like runs',
    async ({ gateway: g }) => {
      const imageLike = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB';
      g.fake.enqueueFaults({ kind: 'garbage', status: 200, body: `<html>${imageLike}</html>` });
      expect((await send(g)).statusCode).toBe(502);
      const logged = g.logs().find((line) => typeof line.upstream_excerpt === 'string');
      expect(logged?.upstream_excerpt).toBe('<html>[redacted]</html>');
    },
  );
});

describe('SecretMask', () => {
  it('names the longest secret when one extends another, leaving nothing of either', () => {
    const mask = new SecretMask(['tok.en-1', 'tok.en-1x']);
    expect(mask.mask(Buffer.from('a tok.en-1x b tok.en-1 c')).toString()).toBe(
      `a [token:${fingerprint('tok.en-1x')}] b [token:${fingerprint('tok.en-1')}] c`,
    );
    const key = 'agw_key_tok.en-1';
    expect(mask.mask(Buffer.from(`k ${key}`), key).toString()).toBe(`k [key:${fingerprint(key)}]`);
  });

  it('never masks inside a replacement, so a token may be a plain word', () => {
    const mask = new SecretMask(['key', 'token']);
    expect(mask.mask(Buffer.from('a token and a key')).toString()).toBe(
      `a [token:${fingerprint('token')}] and a [token:${fingerprint('key')}]`,
    );
  });

  it('returns the same buffer when there is nothing to mask', () => {
    const body = Buffer.from('{"solution":{"label":"x"}}');
    expect(new SecretMask([SHORT]).mask(body, CLIENT_KEY)).toBe(body);
  });
});
