// Whole-series loading in one request: WADO-RS retrieves the series as stored
// (multipart/related; type="application/dicom"; transfer-syntax=*), streamed; each
// instance is split into frames as it arrives and handed to the image loader through
// its "compressed frame data" metadata hook, so no frame needs a request of its own.
// (One request per frame, the loader's default, is bounded by the browser's six
// connections per server; a series of hundreds of images then takes much longer.)
import dicomParser from 'dicom-parser';
import { DICOMWEB } from '../api';
import { core } from './cs';
import type { DisplaySet } from './study';

interface Frame { pixelData: Uint8Array; transferSyntaxUid: string }

const frames = new Map<string, Frame>(); // `${sop}/${frame index from 0}`
let installed = false;

function install(): void {
  if (installed) return;
  installed = true;
  const provider = (type: string, imageId: unknown, options?: { frameIndex?: number }) => {
    if (type !== 'compressedFrameData' || typeof imageId !== 'string') return undefined;
    const m = /instances\/([^/]+)\/frames\/(\d+)/.exec(imageId);
    if (!m) return undefined;
    const index = options?.frameIndex ?? Number(m[2]) - 1;
    return frames.get(`${m[1]}/${index}`);
  };
  core.metaData.addProvider(provider as unknown as Parameters<typeof core.metaData.addProvider>[0], 10000);
}

export function forget(sop: string, frameCount: number): void {
  for (let i = 0; i < frameCount; i++) frames.delete(`${sop}/${i}`);
}

/** Frames of one Part 10 file, or null when the viewer should fetch them one by one. */
function splitInstance(bytes: Uint8Array): { sop: string; frames: Frame[] } | null {
  const ds = dicomParser.parseDicom(bytes);
  const sop = ds.string('x00080018');
  const syntax = ds.string('x00020010');
  const el = ds.elements.x7fe00010;
  if (!sop || !syntax || !el) return null;
  const count = ds.intString('x00280008') || 1;
  const out: Frame[] = [];
  if (el.encapsulatedPixelData) {
    const fragments = el.fragments ?? [];
    for (let i = 0; i < count; i++) {
      let data: Uint8Array;
      if (count === 1) data = dicomParser.readEncapsulatedPixelDataFromFragments(ds, el, 0, fragments.length);
      else if (fragments.length === count) data = dicomParser.readEncapsulatedPixelDataFromFragments(ds, el, i, 1);
      else if (el.basicOffsetTable?.length) data = dicomParser.readEncapsulatedImageFrame(ds, el, i);
      else return null;
      out.push({ pixelData: data.slice(), transferSyntaxUid: syntax });
    }
    return { sop, frames: out };
  }
  if (syntax !== '1.2.840.10008.1.2' && syntax !== '1.2.840.10008.1.2.1') return null; // big endian, deflate
  const bits = ds.uint16('x00280100') ?? 16;
  if (bits % 8) return null;
  const size = (ds.uint16('x00280010') ?? 0) * (ds.uint16('x00280011') ?? 0) * (ds.uint16('x00280002') ?? 1) * (bits / 8);
  if (!size || el.length < size * count) return null;
  for (let i = 0; i < count; i++) {
    const start = el.dataOffset + i * size;
    out.push({ pixelData: bytes.slice(start, start + size), transferSyntaxUid: syntax });
  }
  return { sop, frames: out };
}

function indexOf(haystack: Uint8Array, needle: Uint8Array, from: number, to: number): number {
  const first = needle[0];
  outer: for (let i = haystack.indexOf(first, from); i !== -1 && i <= to - needle.length; i = haystack.indexOf(first, i + 1)) {
    for (let j = 1; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/**
 * Stream the series; ``onInstance`` is called with each instance's SOP Instance UID as
 * soon as its frames are registered. Instances that cannot be split are left out (the
 * caller fetches what is still missing frame by frame); rejects when the retrieve fails.
 */
export async function streamSeries(
  set: DisplaySet,
  onInstance: (sop: string, frameCount: number) => void,
  isCancelled: () => boolean,
): Promise<void> {
  install();
  const url = `${DICOMWEB}/studies/${set.study.uid}/series/${set.seriesUid}`;
  const response = await fetch(url, {
    credentials: 'same-origin',
    headers: { Accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' },
  });
  if (!response.ok || !response.body) throw new Error(`series retrieve answered ${response.status}`);
  const boundary = /boundary="?([^";]+)"?/i.exec(response.headers.get('content-type') ?? '')?.[1];
  if (!boundary) throw new Error('series retrieve: no multipart boundary');
  const delimiter = new TextEncoder().encode(`\r\n--${boundary}`);
  const reader = response.body.getReader();
  // The body starts "--boundary": put a CRLF before it so every delimiter looks alike.
  let buffer = new Uint8Array(1 << 20);
  buffer.set([13, 10]);
  let length = 2;
  let searched = 0;
  const append = (chunk: Uint8Array) => {
    if (length + chunk.length > buffer.length) {
      const grown = new Uint8Array(Math.max(buffer.length * 2, length + chunk.length));
      grown.set(buffer.subarray(0, length));
      buffer = grown;
    }
    buffer.set(chunk, length);
    length += chunk.length;
  };
  for (;;) {
    if (isCancelled()) {
      await reader.cancel();
      return;
    }
    const { done, value } = await reader.read();
    if (value) append(value);
    // Take every complete part: delimiter, headers, CRLFCRLF, body, next delimiter.
    for (;;) {
      const start = indexOf(buffer, delimiter, 0, length);
      if (start > 0) {
        // Anything before the first delimiter is preamble: drop it.
        buffer.copyWithin(0, start, length);
        length -= start;
        searched = 0;
        continue;
      }
      if (start !== 0) break;
      if (length >= delimiter.length + 2 && buffer[delimiter.length] === 45 && buffer[delimiter.length + 1] === 45) {
        return; // closing delimiter
      }
      const headersEnd = indexOf(buffer, new Uint8Array([13, 10, 13, 10]), delimiter.length, Math.min(length, 4096));
      if (headersEnd === -1) break;
      const bodyStart = headersEnd + 4;
      const next = indexOf(buffer, delimiter, Math.max(bodyStart, searched), length);
      if (next === -1) {
        searched = Math.max(bodyStart, length - delimiter.length);
        break;
      }
      const body = buffer.subarray(bodyStart, next);
      let split: ReturnType<typeof splitInstance> = null;
      try {
        split = splitInstance(body);
      } catch {
        split = null;
      }
      if (split) {
        const { sop, frames: parts } = split;
        parts.forEach((f, i) => frames.set(`${sop}/${i}`, f));
        onInstance(sop, parts.length);
      }
      buffer.copyWithin(0, next, length);
      length -= next;
      searched = 0;
    }
    if (done) return;
  }
}
