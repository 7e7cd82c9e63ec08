// Request bodies for the benchmarks: real PNG files (noise, so deflate cannot shrink them) of a
// chosen size, wrapped in the recognition request's JSON.
import { crc32, deflateSync } from 'node:zlib';

export const QUESTION = 'Please click each image containing a bus';

/** A valid RGB PNG of about `bytes` bytes, filled with deterministic noise. */
export function makePng(bytes: number, seed = 1): Buffer {
  const width = 64;
  const rowBytes = 1 + width * 3; // filter byte + RGB
  const height = Math.max(1, Math.round(bytes / rowBytes));
  const raw = Buffer.alloc(rowBytes * height);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < raw.length; i++) {
    if (i % rowBytes === 0) continue; // filter type 0 (None)
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    raw[i] = state & 0xff;
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit depth, truecolour, no interlace
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(raw, { level: 1 })),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

function chunk(type: string, data: Buffer): Buffer {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  data.copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

/** The recognition request's JSON for one image. */
export function recognitionBody(question: string, png: Buffer): string {
  return JSON.stringify({ question, queries: [png.toString('base64')] });
}

/**
 * autocannon replaces each `[<id>]` with a unique id per request (`idReplacement`), so every
 * request has its own question and therefore its own cache and merge key.
 */
export const UNIQUE_MARK = '[<id>]';

/** Bytes of the JSON around the Base64 image: `{"question":"…","queries":["…"]}`. */
const envelopeBytes = (question: string) => recognitionBody(question, Buffer.alloc(0)).length;

const sized = new Map<string, Buffer>();

/** A noise PNG whose recognition body with `question` is about `bytes` bytes long. */
export function pngForBody(bytes: number, question = QUESTION): Buffer {
  const key = `${bytes} ${question}`;
  const made = sized.get(key) ?? sizePng(bytes, question);
  sized.set(key, made);
  return made;
}

function sizePng(bytes: number, question: string): Buffer {
  const target = Math.floor(((bytes - envelopeBytes(question)) * 3) / 4);
  let request = target;
  let png = makePng(request);
  // makePng grows in rows of pixels; two corrections bring it within a row of the target.
  for (let i = 0; i < 2; i++) {
    request += target - png.length;
    png = makePng(request);
  }
  return png;
}

/**
 * `count` bodies that differ only in their question (so each has its own cache and merge key),
 * sharing one image: Buffers, so that multi-megabyte bodies are not held as strings too.
 */
export function distinctBodies(count: number, png: Buffer, tag: string): Buffer[] {
  const image = Buffer.from(png.toString('base64'));
  const suffix = Buffer.from('"]}');
  return Array.from({ length: count }, (_, i) =>
    Buffer.concat([
      Buffer.from(`{"question":${JSON.stringify(`${QUESTION} #${i} ${tag}`)},"queries":["`),
      image,
      suffix,
    ]),
  );
}
