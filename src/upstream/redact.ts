/** Long runs of Base64/hex/token-like characters: images, keys or tokens an upstream might echo. */
const SECRET_LIKE = /[A-Za-z0-9+/=_-]{24,}/g;

// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point.
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/g;

/** A short, log-safe excerpt of an upstream body: secret-like runs masked, control chars dropped. */
export function redactedExcerpt(body: Buffer | string, maxChars = 200): string {
  const text = typeof body === 'string' ? body : body.subarray(0, maxChars * 4).toString('utf8');
  return text.slice(0, maxChars).replace(SECRET_LIKE, '[redacted]').replace(CONTROL_CHARS, ' ');
}
