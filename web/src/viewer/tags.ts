// The DICOM tag browser: the WADO-RS metadata of the shown instance, searchable.
import { utilities } from '@cornerstonejs/metadata';
import type { DicomJson, DicomValue } from '../dicom';
import { h, modal, mount } from '../dom';

function keyword(tag: string): string {
  try {
    const entry = utilities.Tags.dictionaryLookup(`(${tag.slice(0, 4)},${tag.slice(4)})`);
    return entry?.name ?? '';
  } catch {
    return '';
  }
}

function valueText(v: DicomValue): string {
  if (v.BulkDataURI) return '(bulk data)';
  if (v.InlineBinary) return `(binary, ${Math.floor((v.InlineBinary.length * 3) / 4)} bytes)`;
  if (!v.Value) return '';
  if (v.vr === 'SQ') return `(${v.Value.length} item${v.Value.length === 1 ? '' : 's'})`;
  return v.Value.map((x) => (x && typeof x === 'object' ? (x as { Alphabetic?: string }).Alphabetic ?? JSON.stringify(x) : String(x))).join('\\');
}

function rows(ds: DicomJson, depth: number, out: HTMLElement[]): void {
  for (const tag of Object.keys(ds).sort()) {
    const v = ds[tag];
    const indent = '› '.repeat(depth);
    out.push(h('tr', { 'data-search': `${tag} ${keyword(tag)} ${valueText(v)}`.toLowerCase() },
      h('td.tag', `${indent}(${tag.slice(0, 4)},${tag.slice(4)})`),
      h('td.kw', keyword(tag)),
      h('td.vr', v.vr),
      h('td.val', valueText(v).slice(0, 400))));
    if (v.vr === 'SQ' && v.Value && depth < 6) {
      (v.Value as DicomJson[]).forEach((item, i) => {
        out.push(h('tr', h('td.tag', `${indent}  item ${i + 1}`), h('td'), h('td'), h('td')));
        rows(item ?? {}, depth + 1, out);
      });
    }
  }
}

export function showTags(instance: DicomJson | undefined, title: string): void {
  const body = h('div', { style: { display: 'flex', flexDirection: 'column', gap: '8px', minHeight: '0' } });
  if (!instance) {
    mount(body, h('p', 'No instance is shown.'));
    modal('DICOM tags', body);
    return;
  }
  const out: HTMLElement[] = [];
  rows(instance, 0, out);
  const filter = h('input.tags-filter', { type: 'search', placeholder: 'Filter by tag, name or value', 'aria-label': 'Filter tags' }) as HTMLInputElement;
  filter.addEventListener('input', () => {
    const q = filter.value.toLowerCase();
    for (const row of out) row.hidden = !!q && !(row.dataset.search ?? '').includes(q);
  });
  mount(body, h('p.muted', title), filter, h('div.tags-table', { style: { maxHeight: '65vh' } }, h('table', h('tbody', out))));
  modal('DICOM tags', body);
  filter.focus();
}
