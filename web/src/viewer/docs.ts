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

export async function renderPDF(set: DisplaySet): Promise<HTMLElement> {
  const instance = set.instances?.[0];
  if (!instance) return h('div.doc', 'No document.');
  let bytes: Uint8Array;
  const inline = instance[TAG.EncapsulatedDocument]?.InlineBinary;
  if (inline) {
    bytes = Uint8Array.from(atob(inline), (c) => c.charCodeAt(0));
  } else {
    const response = await request(bulkUrl(set, instance, TAG.EncapsulatedDocument), {
      headers: { Accept: 'multipart/related; type="application/octet-stream"' },
    });
    bytes = (await firstPart(response)).bytes;
  }
  // The value may carry a padding byte after %%EOF.
  const url = URL.createObjectURL(new Blob([bytes as BlobPart], { type: 'application/pdf' }));
  const title = str(instance, TAG.DocumentTitle) || 'Document';
  return h('div.doc.media.pdf', { 'data-url': url },
    h('div.doc-bar', h('strong', title), h('span.spacer'),
      h('a', { href: url, target: '_blank', rel: 'noopener' }, 'Open in a new tab'),
      h('a', { href: url, download: `${title}.pdf` }, 'Download')),
    h('object', { data: url, type: 'application/pdf', title, 'aria-label': title },
      h('p', { style: { padding: '16px' } }, 'Your browser cannot show PDF here: open it in a new tab or download it.')));
}

export async function renderVideo(set: DisplaySet): Promise<HTMLElement> {
  const instance = set.instances?.[0];
  if (!instance) return h('div.doc', 'No video.');
  const response = await request(bulkUrl(set, instance, TAG.PixelData), {
    headers: { Accept: 'multipart/related; type="application/octet-stream"; transfer-syntax=*' },
  });
  const part = await firstPart(response);
  const url = URL.createObjectURL(new Blob([part.bytes as BlobPart], { type: 'video/mp4' }));
  const frames = num(instance, TAG.NumberOfFrames);
  return h('div.doc.media', { 'data-url': url },
    h('video', { src: url, controls: true, playsinline: true, title: `${frames ?? ''} frames` }));
}

export function otherObject(set: DisplaySet): HTMLElement {
  const classes = new Set((set.instances ?? []).flatMap((i) => strs(i, TAG.SOPClassUID)));
  return h('div.doc', h('p', `This series (${set.modality}) holds objects the viewer does not display.`),
    h('p.muted', `SOP classes: ${[...classes].join(', ')}`), h('p.muted', 'Use the tag browser (⌘/Ctrl+I or the Tags button) to see their content.'));
}
