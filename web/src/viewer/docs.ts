// Objects that are not images: structured reports as text, encapsulated PDF, video.
import { DICOMWEB, request } from '../api';
import { dicomDate, dicomTime, num, personName, seq, str, strs, TAG, type DicomJson } from '../dicom';
import { h } from '../dom';
import type { DisplaySet } from './study';

function conceptName(item: DicomJson): string {
  return str(seq(item, TAG.ConceptNameCodeSequence)[0], TAG.CodeMeaning);
}

function contentValue(item: DicomJson): string {
  const type = str(item, TAG.ValueType);
  switch (type) {
    case 'TEXT': case 'UIDREF': case 'DATE': case 'TIME': case 'DATETIME':
      return str(item, TAG.TextValue) || str(item, '0040A121') || str(item, '0040A122') || str(item, TAG.DateTime) || str(item, '0040A124');
    case 'PNAME':
      return personName(str(item, TAG.PersonName));
    case 'CODE':
      return str(seq(item, TAG.ConceptCodeSequence)[0], TAG.CodeMeaning);
    case 'NUM': {
      const mv = seq(item, TAG.MeasuredValueSequence)[0];
      if (!mv) return '(no value)';
      const unit = seq(mv, TAG.MeasurementUnitsCodeSequence)[0];
      const code = str(unit, TAG.CodeValue);
      return `${str(mv, TAG.NumericValue)} ${code === '1' ? '' : code || str(unit, TAG.CodeMeaning)}`.trim();
    }
    case 'SCOORD': case 'SCOORD3D':
      return `${str(item, TAG.GraphicType).toLowerCase()} (${(item[TAG.GraphicData]?.Value ?? []).length / (type === 'SCOORD' ? 2 : 3)} points)`;
    case 'IMAGE': case 'COMPOSITE': {
      const ref = seq(item, TAG.ReferencedSOPSequence)[0];
      return `image ${str(ref, TAG.ReferencedSOPInstanceUID).slice(-12)}`;
    }
    case 'CONTAINER':
      return '';
    default:
      return str(item, TAG.TextValue);
  }
}

function contentTree(items: DicomJson[]): HTMLElement {
  return h('ul', items.map((item) => {
    const name = conceptName(item);
    const value = contentValue(item);
    const children = seq(item, TAG.ContentSequence);
    const isContainer = str(item, TAG.ValueType) === 'CONTAINER';
    return h('li',
      isContainer ? h('strong', name) : [h('span.concept', name ? `${name}: ` : ''), h('span.value', value)],
      children.length ? contentTree(children) : null);
  }));
}

export function renderSR(set: DisplaySet): HTMLElement {
  const docs = (set.instances ?? []).map((sr) => h('article.sr',
    h('h1', conceptName(sr) || 'Structured report'),
    h('p.muted', [
      `${dicomDate(str(sr, TAG.ContentDate))} ${dicomTime(str(sr, TAG.ContentTime))}`,
      str(sr, TAG.CompletionFlag) && `completion: ${str(sr, TAG.CompletionFlag).toLowerCase()}`,
      str(sr, TAG.VerificationFlag) && `verification: ${str(sr, TAG.VerificationFlag).toLowerCase()}`,
    ].filter(Boolean).join(' · ')),
    contentTree(seq(sr, TAG.ContentSequence)),
  ));
  return h('div.doc', docs.length ? docs : h('p', 'This series has no report content.'));
}

/** First part of a multipart/related answer (bulk data come that way). */
async function firstPart(response: Response): Promise<{ bytes: Uint8Array; type: string }> {
  const type = response.headers.get('content-type') ?? '';
  const data = new Uint8Array(await response.arrayBuffer());
  const boundary = /boundary="?([^";]+)"?/i.exec(type)?.[1];
  if (!type.startsWith('multipart/') || !boundary) return { bytes: data, type };
  const text = new TextDecoder('latin1').decode(data.subarray(0, Math.min(data.length, 4096)));
  const start = text.indexOf(`--${boundary}`);
  const headerEnd = text.indexOf('\r\n\r\n', start);
  const headers = text.slice(start, headerEnd);
  const partType = /content-type:\s*([^\r\n]+)/i.exec(headers)?.[1] ?? '';
  const body = data.subarray(headerEnd + 4);
  const tail = new TextEncoder().encode(`\r\n--${boundary}`);
  let end = body.length;
  outer: for (let i = body.length - tail.length; i >= 0; i--) {
    for (let j = 0; j < tail.length; j++) if (body[i + j] !== tail[j]) continue outer;
    end = i;
    break;
  }
  return { bytes: body.subarray(0, end), type: partType };
}

function bulkUrl(set: DisplaySet, instance: DicomJson, tag: string): string {
  const uri = instance[tag]?.BulkDataURI;
  if (uri) {
    try { return new URL(uri, location.origin).pathname; } catch { /* fall through */ }
  }
  return `${DICOMWEB}/studies/${set.study.uid}/series/${set.seriesUid}/instances/${str(instance, TAG.SOPInstanceUID)}/bulkdata/${tag}`;
}

/** A file name from a document title. */
function fileName(title: string, extension: string): string {
  return `${title.replace(/[\\/:*?"<>|\u0000-\u001f]+/g, ' ').trim() || 'document'}.${extension}`;
}

function errorBox(title: string, ...lines: string[]): HTMLElement {
  return h('div.doc-error', { role: 'alert' }, h('p', h('strong', title)), lines.map((line) => h('p', line)));
}

/** Bulk data value of an instance (inline in the metadata, or fetched by its BulkDataURI). */
async function bulkValue(set: DisplaySet, instance: DicomJson, tag: string, accept: string): Promise<{ bytes: Uint8Array; type: string }> {
  const inline = instance[tag]?.InlineBinary;
  if (inline) return { bytes: Uint8Array.from(atob(inline), (c) => c.charCodeAt(0)), type: '' };
  const response = await request(bulkUrl(set, instance, tag), { headers: { Accept: accept } });
  return firstPart(response);
}

/** Encapsulated PDF, drawn with pdf.js (loaded on demand) into the pane. */
export async function renderPDF(set: DisplaySet): Promise<HTMLElement> {
  const instance = set.instances?.[0];
  if (!instance) return h('div.doc', 'No document.');
  const title = str(instance, TAG.DocumentTitle) || 'Document';
  let bytes: Uint8Array;
  try {
    bytes = (await bulkValue(set, instance, TAG.EncapsulatedDocument, 'multipart/related; type="application/octet-stream"')).bytes;
  } catch (error) {
    return h('div.doc.media.pdf', { 'data-state': 'error' },
      h('div.doc-bar', h('strong', title)),
      errorBox('The document could not be loaded.', (error as Error).message));
  }
  // The value may carry a padding byte after %%EOF: pdf.js and PDF readers ignore it.
  const url = URL.createObjectURL(new Blob([bytes as BlobPart], { type: 'application/pdf' }));
  const controls = h('span.pdf-controls');
  const body = h('div.pdf-body', h('p.muted.pdf-loading', 'Loading the document…'));
  const root = h('div.doc.media.pdf', { 'data-url': url, 'data-state': 'loading' },
    h('div.doc-bar', h('strong.doc-title', { title }, title), controls, h('span.spacer'),
      h('a', { href: url, target: '_blank', rel: 'noopener' }, 'Open in a new tab'),
      h('a', { href: url, download: fileName(title, 'pdf') }, 'Download')),
    body);
  import('./pdfview')
    .then((viewer) => viewer.showPdf(root, body, controls, bytes))
    .catch((error: Error) => {
      root.dataset.state = 'error';
      body.replaceChildren(errorBox('The PDF viewer could not be started.', error.message, 'Use Download or Open in a new tab.'));
    });
  return root;
}

// -- video -------------------------------------------------------------------------------
interface VideoCodec {
  name: string;
  /** RFC 6381 codec of the stream, for canPlayType / MediaSource.isTypeSupported. */
  codec: string;
}

/** The codec of each video transfer syntax (PS3.5 8.2.5-8.2.11; UID + ".1": fragmentable). */
export function videoCodec(syntax: string): VideoCodec | null {
  const base = syntax.replace(/\.1$/, '');
  switch (base) {
    case '1.2.840.10008.1.2.4.100': return { name: 'MPEG-2 Main Profile / Main Level', codec: 'mp4v.61' };
    case '1.2.840.10008.1.2.4.101': return { name: 'MPEG-2 Main Profile / High Level', codec: 'mp4v.61' };
    case '1.2.840.10008.1.2.4.102': return { name: 'H.264 High Profile / Level 4.1', codec: 'avc1.640029' };
    case '1.2.840.10008.1.2.4.103': return { name: 'H.264 BD-compatible High Profile / Level 4.1', codec: 'avc1.640029' };
    case '1.2.840.10008.1.2.4.104': return { name: 'H.264 High Profile / Level 4.2 (2D)', codec: 'avc1.64002A' };
    case '1.2.840.10008.1.2.4.105': return { name: 'H.264 High Profile / Level 4.2 (3D)', codec: 'avc1.64002A' };
    case '1.2.840.10008.1.2.4.106': return { name: 'H.264 Stereo High Profile / Level 4.2', codec: 'avc1.80002A' };
    case '1.2.840.10008.1.2.4.107': return { name: 'HEVC/H.265 Main Profile / Level 5.1', codec: 'hvc1.1.6.L153.B0' };
    case '1.2.840.10008.1.2.4.108': return { name: 'HEVC/H.265 Main 10 Profile / Level 5.1', codec: 'hvc1.2.4.L153.B0' };
    default: return null;
  }
}

type Container = 'mp4' | 'mpeg-ts' | 'mpeg-ps' | 'elementary' | 'unknown';

/** The container of a video stream, from its first bytes. */
export function videoContainer(b: Uint8Array): Container {
  const ascii = (from: number, to: number) => String.fromCharCode(...b.subarray(from, to));
  if (b.length > 8 && ['ftyp', 'styp', 'moov'].includes(ascii(4, 8))) return 'mp4';
  if (b[0] === 0x47 && (b.length <= 188 || b[188] === 0x47)) return 'mpeg-ts';
  if (b[0] === 0 && b[1] === 0 && b[2] === 1 && b[3] === 0xba) return 'mpeg-ps';
  if (b[0] === 0 && b[1] === 0 && (b[2] === 1 || (b[2] === 0 && b[3] === 1))) return 'elementary';
  return 'unknown';
}

const EXTENSION: Record<Container, string> = { mp4: 'mp4', 'mpeg-ts': 'ts', 'mpeg-ps': 'mpg', elementary: 'bin', unknown: 'bin' };
const CONTAINER_NAME: Record<Container, string> = {
  mp4: 'MP4', 'mpeg-ts': 'MPEG transport stream', 'mpeg-ps': 'MPEG program stream', elementary: 'elementary stream', unknown: 'unknown container',
};

/** How this browser can play the stream: a plain <video> source, Media Source Extensions, or not. */
function playback(codec: VideoCodec | null, container: Container): { how: 'src' | 'mse' | null; mime: string } {
  const probe = document.createElement('video');
  if (codec && container === 'mp4') {
    const mime = `video/mp4; codecs="${codec.codec}"`;
    return { how: probe.canPlayType(mime) ? 'src' : null, mime };
  }
  if (codec && container === 'mpeg-ts') {
    const mime = `video/mp2t; codecs="${codec.codec}"`;
    return { how: window.MediaSource?.isTypeSupported(mime) ? 'mse' : null, mime };
  }
  return { how: null, mime: '' };
}

/** Plays ``bytes`` through Media Source Extensions (MPEG transport streams in Chromium). */
function playWithMse(video: HTMLVideoElement, bytes: Uint8Array, mime: string, fail: (why: string) => void): void {
  const source = new MediaSource();
  const url = URL.createObjectURL(source);
  source.addEventListener('sourceopen', async () => {
    URL.revokeObjectURL(url);
    try {
      const buffer = source.addSourceBuffer(mime);
      const settled = () => new Promise<void>((resolve, reject) => {
        buffer.addEventListener('updateend', () => resolve(), { once: true });
        buffer.addEventListener('error', () => reject(new Error('the stream could not be decoded')), { once: true });
      });
      const chunk = 188 * 8192;
      let shifted = false;
      for (let offset = 0; offset < bytes.length; offset += chunk) {
        const done = settled();
        buffer.appendBuffer(bytes.subarray(offset, offset + chunk) as Uint8Array<ArrayBuffer>);
        await done;
        // Transport streams start at their first time stamp (often over a second):
        // appended again from the start shifted to 0, so that the clip plays from 0:00.
        const start = buffer.buffered.length ? buffer.buffered.start(0) : 0;
        if (offset === 0 && start > 0.001 && !shifted) {
          shifted = true;
          buffer.abort();
          const removed = settled();
          buffer.remove(0, Infinity);
          await removed;
          buffer.timestampOffset = -start;
          offset = -chunk;
        }
      }
      source.endOfStream();
    } catch (error) {
      fail((error as Error).message);
    }
  }, { once: true });
  video.src = url;
}

/** A video object (MPEG-2, H.264, HEVC in the Pixel Data) in a <video> player when the
 * browser can play its encoding; otherwise a message and a download link. */
export async function renderVideo(set: DisplaySet): Promise<HTMLElement> {
  const instance = set.instances?.[0];
  if (!instance) return h('div.doc', 'No video.');
  const frames = num(instance, TAG.NumberOfFrames);
  const frameTime = num(instance, TAG.FrameTime);
  const fps = num(instance, TAG.CineRate) ?? (frameTime ? Math.round(10000 / frameTime) / 10 : undefined);
  let part: { bytes: Uint8Array; type: string };
  try {
    part = await bulkValue(set, instance, TAG.PixelData, 'multipart/related; type="application/octet-stream"; transfer-syntax=*');
  } catch (error) {
    return h('div.doc.media.video', { 'data-state': 'error' },
      h('div.doc-bar', h('strong', 'Video')),
      errorBox('The video could not be loaded.', (error as Error).message));
  }
  const syntax = /transfer-syntax=([0-9.]+)/i.exec(part.type)?.[1]
    ?? (str(instance, TAG.AvailableTransferSyntaxUID) || str(instance, TAG.TransferSyntaxUID));
  const codec = videoCodec(syntax);
  const container = videoContainer(part.bytes);
  const { how, mime } = playback(codec, container);
  const url = URL.createObjectURL(new Blob([part.bytes as BlobPart], { type: container === 'mp4' ? 'video/mp4' : 'application/octet-stream' }));
  const name = fileName(str(instance, TAG.SeriesDescription) || 'video', EXTENSION[container]);
  const facts = [
    codec?.name ?? (syntax ? `transfer syntax ${syntax}` : 'unknown encoding'),
    CONTAINER_NAME[container],
    num(instance, TAG.Columns) && `${num(instance, TAG.Columns)}×${num(instance, TAG.Rows)}`,
    frames && `${frames} frames`,
    fps && `${fps} fps`,
  ].filter(Boolean).join(' · ');
  const root = h('div.doc.media.video', { 'data-url': url, 'data-state': how ? 'loading' : 'unsupported', 'data-codec': codec?.codec ?? '', 'data-container': container },
    h('div.doc-bar', h('strong', 'Video'), h('span.muted.video-facts', facts), h('span.spacer'),
      h('a', { href: url, download: name }, 'Download')));
  const unsupported = (why: string) => {
    root.dataset.state = 'unsupported';
    root.querySelector('video')?.remove();
    root.querySelector('.doc-error')?.remove();
    root.appendChild(errorBox('This browser cannot play this video.', why,
      'Use Download to save it and play it in a video player (VLC, for example).'));
  };
  if (!how) {
    const what = codec ? `${codec.name} in an ${CONTAINER_NAME[container]}` : `transfer syntax ${syntax || 'unknown'}`;
    unsupported(`It is encoded as ${what}, which this browser does not decode.`);
    return root;
  }
  const video = h('video', { controls: true, playsinline: true, preload: 'auto', title: `${frames ?? ''} frames` }) as HTMLVideoElement;
  video.muted = true;
  video.addEventListener('loadeddata', () => { root.dataset.state = 'ready'; });
  video.addEventListener('error', () => unsupported(`The ${codec?.name ?? ''} stream could not be decoded (${video.error?.message || `media error ${video.error?.code ?? ''}`}).`));
  root.appendChild(video);
  if (how === 'src') video.src = url;
  else playWithMse(video, part.bytes, mime, (why) => unsupported(`The ${codec?.name ?? ''} stream could not be decoded (${why}).`));
  return root;
}

export function otherObject(set: DisplaySet): HTMLElement {
  const classes = new Set((set.instances ?? []).flatMap((i) => strs(i, TAG.SOPClassUID)));
  return h('div.doc', h('p', `This series (${set.modality}) holds objects the viewer does not display.`),
    h('p.muted', `SOP classes: ${[...classes].join(', ')}`), h('p.muted', 'Use the tag browser (⌘/Ctrl+I or the Tags button) to see their content.'));
}
