import { tokenFingerprint } from './token-pool.ts';

interface Secret {
  /** Every spelling the secret may take in upstream text: raw, and JSON-escaped when different. */
  forms: Buffer[];
  replacement: Buffer;
}

function secretOf(value: string, label: string): Secret {
  const escaped = JSON.stringify(value).slice(1, -1);
  const forms = [Buffer.from(value)];
  if (escaped !== value) forms.push(Buffer.from(escaped));
  return { forms, replacement: Buffer.from(`[${label}:${tokenFingerprint(value)}]`) };
}

/**
 * Replaces secrets by value in upstream text before the gateway logs or returns it: every
 * configured upstream token, and the key of the client being served. Masking by pattern
 * (redact.ts) cannot catch a token that looks like ordinary text; this can, whatever it looks
 * like. A body without secrets is returned as the same Buffer, uncopied.
 */
export class SecretMask {
  readonly #tokens: Secret[];

  constructor(tokens: readonly string[]) {
    this.#tokens = tokens.map((token) => secretOf(token, 'token'));
  }

  mask(body: Buffer, clientKey?: string): Buffer {
    let out = body;
    const secrets = clientKey ? [...this.#tokens, secretOf(clientKey, 'key')] : this.#tokens;
    for (const secret of secrets) {
      for (const form of secret.forms) out = replaceAll(out, form, secret.replacement);
    }
    return out;
  }
}

function replaceAll(haystack: Buffer, needle: Buffer, replacement: Buffer): Buffer {
  if (needle.length === 0) return haystack;
  let at = haystack.indexOf(needle);
  if (at < 0) return haystack;
  const parts: Buffer[] = [];
  let from = 0;
  while (at >= 0) {
    parts.push(haystack.subarray(from, at), replacement);
    from = at + needle.length;
    at = haystack.indexOf(needle, from);
  }
  parts.push(haystack.subarray(from));
  return Buffer.concat(parts);
}
