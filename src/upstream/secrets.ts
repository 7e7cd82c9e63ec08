import { tokenFingerprint } from './token-pool.ts';

/** One spelling of a secret and what replaces it (made only when found: most bodies hold none). */
interface Form {
  bytes: Buffer;
  replacement: () => Buffer;
}

/**
 * Every spelling the secret may take in upstream text: raw; JSON-escaped (`"` and `\`); and
 * JSON with escaped slashes (`\/`, as PHP and some proxies write it: a Base64 token has `/`).
 */
function formsOf(value: string, label: string): Form[] {
  let made: Buffer | undefined;
  const replacement = () => {
    made ??= Buffer.from(`[${label}:${tokenFingerprint(value)}]`);
    return made;
  };
  const json = JSON.stringify(value).slice(1, -1);
  const spellings = new Set([value, json, json.replaceAll('/', '\\/')]);
  return [...spellings]
    .filter((spelling) => spelling.length > 0)
    .map((spelling) => ({ bytes: Buffer.from(spelling), replacement }));
}

const longestFirst = (a: Form, b: Form) => b.bytes.length - a.bytes.length;

/**
 * Replaces secrets by value in upstream text before the gateway logs or returns it: every
 * configured upstream token, and the key of the client being served. Masking by pattern
 * (redact.ts) cannot catch a token that looks like ordinary text; this can, whatever it looks
 * like. One pass over the text, longest spelling first at each position: a token that extends
 * another is named as itself, and no replacement is masked again (a token may be a plain word).
 * A body without secrets is returned as the same Buffer, uncopied.
 */
export class SecretMask {
  readonly #tokens: Form[];

  constructor(tokens: readonly string[]) {
    this.#tokens = tokens.flatMap((token) => formsOf(token, 'token')).sort(longestFirst);
  }

  mask(body: Buffer, clientKey?: string): Buffer {
    const forms = clientKey
      ? [...this.#tokens, ...formsOf(clientKey, 'key')].sort(longestFirst)
      : this.#tokens;
    return replaceAll(body, forms);
  }
}

/** Replaces every occurrence of any form, scanning once from the left; ties go to the longer. */
function replaceAll(haystack: Buffer, forms: readonly Form[]): Buffer {
  const next = forms.map((form) => haystack.indexOf(form.bytes));
  if (next.every((at) => at < 0)) return haystack;
  const parts: Buffer[] = [];
  let from = 0;
  for (;;) {
    let best = -1;
    let bestAt = Number.POSITIVE_INFINITY;
    for (let i = 0; i < forms.length; i++) {
      let at = next[i] ?? -1;
      if (at >= 0 && at < from) {
        at = haystack.indexOf((forms[i] as Form).bytes, from);
        next[i] = at;
      }
      if (at >= 0 && at < bestAt) {
        best = i;
        bestAt = at;
      }
    }
    const form = forms[best];
    if (form === undefined) break;
    parts.push(haystack.subarray(from, bestAt), form.replacement());
    from = bestAt + form.bytes.length;
  }
  parts.push(haystack.subarray(from));
  return Buffer.concat(parts);
}
