// The study browser: server-side search, sort and paging over /api/v1/studies
// (the management API sorts; QIDO-RS has no orderby), and a patient's timeline.
import { API, describeError, getJSON, logout, session } from '../api';
import { age, dicomDate, dicomTime, isoToDicomDate, personName, toDicomDate } from '../dicom';
import { h, mount } from '../dom';
import { readingBadge, STATUS_FILTERS, type ReadingState } from '../reading';
import { link, navigate, setQuery } from '../router';

export interface StudyRow {
  StudyInstanceUID: string;
  PatientID: string | null;
  PatientName: string | null;
  PatientBirthDate: string | null;
  PatientSex: string | null;
  StudyDate: string | null;
  StudyTime: string | null;
  AccessionNumber: string | null;
  StudyDescription: string | null;
  ReferringPhysicianName: string | null;
  NameOfPhysiciansReadingStudy?: string | string[] | null;
  ModalitiesInStudy: string[] | null;
  NumberOfStudyRelatedSeries: number | null;
  NumberOfStudyRelatedInstances: number | null;
  InstitutionName?: string | null;
  // Hilum's reading status (PUT /api/v1/studies/{uid}/reading); absent from older servers.
  reading_status?: ReadingState['reading_status'];
  reading_user?: string | null;
  reading_changed_at?: string | null;
  changed_after_read?: boolean;
}

interface Page {
  items: StudyRow[];
  total: number;
  limit: number;
  offset: number;
  has_more: boolean;
}

const MODALITIES = ['CT', 'MR', 'CR', 'DX', 'US', 'XA', 'MG', 'NM', 'PT', 'RF', 'OT', 'SR', 'DOC', 'ES', 'SM'];
const PAGE_SIZES = [25, 50, 100, 200];
const TEXT_FILTERS: [string, string, string][] = [
  ['PatientName', 'Patient name', 'DOE^JANE or doe'],
  ['PatientID', 'Patient ID', ''],
  ['AccessionNumber', 'Accession', ''],
  ['ReferringPhysicianName', 'Referring physician', ''],
];
const COLUMNS: { key: string; label: string; sort?: string }[] = [
  { key: 'name', label: 'Patient', sort: 'PatientName' },
  { key: 'id', label: 'Patient ID', sort: 'PatientID' },
  { key: 'birth', label: 'Born / sex' },
  { key: 'date', label: 'Study date', sort: 'StudyDate' },
  { key: 'mod', label: 'Modality' },
  { key: 'desc', label: 'Description' },
  { key: 'acc', label: 'Accession', sort: 'AccessionNumber' },
  { key: 'ref', label: 'Referring' },
  // Hilum's reading status, with the DICOM Name of Physician(s) Reading Study under it.
  { key: 'status', label: 'Status', sort: 'reading_status' },
  { key: 'count', label: 'Series / images' },
];

/** Turn what a person types into a C-FIND style match: prefix match unless wildcards are given. */
export function matchValue(key: string, value: string): string {
  let v = value.trim();
  if (!v) return '';
  if (key === 'PatientName' || key === 'ReferringPhysicianName') v = v.replace(/\s*,\s*/g, '^').replace(/\s+/g, '^');
  return /[*?]/.test(v) ? v : `${v}*`;
}

export function dateRange(kind: string, from: string, to: string): string {
  const today = new Date();
  if (kind === 'today') return toDicomDate(today);
  if (kind === '7d' || kind === '30d') {
    const start = new Date(today);
    start.setDate(start.getDate() - (kind === '7d' ? 6 : 29));
    return `${toDicomDate(start)}-${toDicomDate(today)}`;
  }
  if (kind === 'custom' && (from || to)) return `${isoToDicomDate(from)}-${isoToDicomDate(to)}`;
  return '';
}

function names(value: string | string[] | null | undefined): string {
  if (!value) return '';
  return (Array.isArray(value) ? value : [value]).map(personName).join('; ');
}

export async function renderBrowser(root: HTMLElement, params: URLSearchParams): Promise<() => void> {
  const state = new URLSearchParams(params);
  const inputs: Record<string, HTMLInputElement> = {};
  const modality = h('select', { 'aria-label': 'Modality', name: 'modality' },
    h('option', { value: '' }, 'Any modality'), MODALITIES.map((m) => h('option', { value: m }, m))) as HTMLSelectElement;
  const dateKind = h('select', { 'aria-label': 'Study date', name: 'date' },
    h('option', { value: '' }, 'Any date'), h('option', { value: 'today' }, 'Today'),
    h('option', { value: '7d' }, 'Last 7 days'), h('option', { value: '30d' }, 'Last 30 days'),
    h('option', { value: 'custom' }, 'Custom range…')) as HTMLSelectElement;
  const dateFrom = h('input', { type: 'date', 'aria-label': 'From', name: 'from' }) as HTMLInputElement;
  const dateTo = h('input', { type: 'date', 'aria-label': 'To', name: 'to' }) as HTMLInputElement;
  const custom = h('span.custom-range', dateFrom, '–', dateTo);
  const reading = h('select', { 'aria-label': 'Reading status', name: 'reading' },
    STATUS_FILTERS.map(([value, label]) => h('option', { value }, label))) as HTMLSelectElement;
  const pageSize = h('select', { 'aria-label': 'Studies per page' },
    PAGE_SIZES.map((n) => h('option', { value: n }, `${n} per page`))) as HTMLSelectElement;
  const status = h('div.status', { role: 'status', 'aria-live': 'polite' });
  const tbody = h('tbody');
  const headRow = h('tr');
  const pager = h('div.pager');
  const timeline = h('aside.timeline', { 'aria-label': 'Patient timeline' });

  for (const [key, label, placeholder] of TEXT_FILTERS) {
    inputs[key] = h('input', { type: 'search', name: key, placeholder: placeholder || label, 'aria-label': label, value: state.get(key) ?? '' }) as HTMLInputElement;
  }
  modality.value = state.get('modality') ?? '';
  reading.value = state.get('reading') ?? '';
  dateKind.value = state.get('date') ?? '';
  dateFrom.value = state.get('from') ?? '';
  dateTo.value = state.get('to') ?? '';
  pageSize.value = state.get('limit') ?? '50';
  const sortKey = () => state.get('sort') ?? '-StudyDate';
  const offset = () => Number(state.get('offset') ?? 0);

  const syncCustom = () => { custom.hidden = dateKind.value !== 'custom'; };
  syncCustom();

  let seq = 0;
  let timer: number | undefined;

  const readFilters = () => {
    for (const key of Object.keys(inputs)) {
      if (inputs[key].value.trim()) state.set(key, inputs[key].value.trim()); else state.delete(key);
    }
    for (const [key, el] of [['modality', modality], ['reading', reading], ['date', dateKind], ['from', dateFrom], ['to', dateTo]] as const) {
      if (el.value) state.set(key, el.value); else state.delete(key);
    }
    state.set('limit', pageSize.value);
  };

  const search = async () => {
    const mine = ++seq;
    setQuery(state);
    const query = new URLSearchParams();
    for (const key of Object.keys(inputs)) {
      const v = matchValue(key, state.get(key) ?? '');
      if (v) query.set(key, v);
    }
    if (state.get('modality')) query.set('ModalitiesInStudy', state.get('modality')!);
    const range = dateRange(state.get('date') ?? '', state.get('from') ?? '', state.get('to') ?? '');
    if (range) query.set('StudyDate', range);
    if (state.get('reading')) query.set('reading_status', state.get('reading')!);
    // By status, newest first within each status.
    query.set('sort', /^-?reading_status$/.test(sortKey()) ? `${sortKey()},-StudyDate` : sortKey());
    query.set('limit', pageSize.value);
    query.set('offset', String(offset()));
    status.textContent = 'Searching…';
    status.className = 'status busy';
    try {
      const page = await getJSON<Page>(`${API}/studies?${query}`);
      if (mine !== seq) return;
      drawRows(page);
      status.className = 'status';
      status.textContent = page.total === 0 ? 'No study matches.' : '';
    } catch (error) {
      if (mine !== seq) return;
      status.className = 'status error';
      status.textContent = describeError(error);
      mount(tbody);
      mount(pager);
    }
  };

  const schedule = (resetOffset = true) => {
    readFilters();
    if (resetOffset) state.delete('offset');
    window.clearTimeout(timer);
    timer = window.setTimeout(() => void search(), 250);
  };

  const drawHead = () => {
    const current = sortKey();
    mount(headRow, COLUMNS.map((c) => {
      if (!c.sort) return h('th', { class: `col-${c.key}` }, c.label);
      const dir = current === c.sort ? 'ascending' : current === `-${c.sort}` ? 'descending' : 'none';
      return h('th', { class: `col-${c.key} sortable`, 'aria-sort': dir },
        h('button', {
          onclick: () => {
            state.set('sort', current === `-${c.sort}` ? c.sort! : `-${c.sort}`);
            state.delete('offset');
            drawHead();
            void search();
          },
        }, c.label, h('span.arrow', dir === 'ascending' ? '▲' : dir === 'descending' ? '▼' : '')));
    }));
  };

  const drawRows = (page: Page) => {
    mount(tbody, page.items.map((s) => {
      const href = `/viewer/${s.StudyInstanceUID}`;
      const row = h('tr', {
        tabindex: 0,
        'data-study': s.StudyInstanceUID,
        onclick: (e: MouseEvent) => {
          if ((e.target as HTMLElement).closest('a,button')) return;
          select(s, row);
        },
        ondblclick: () => navigate(href),
        onkeydown: (e: KeyboardEvent) => { if (e.key === 'Enter') navigate(href); },
      },
      h('td.col-name', { 'data-label': 'Patient' }, h('a', { href, onclick: link }, personName(s.PatientName) || '(no name)')),
      h('td.col-id', { 'data-label': 'Patient ID' }, s.PatientID ?? ''),
      h('td.col-birth', { 'data-label': 'Born / sex' }, [dicomDate(s.PatientBirthDate), age(s.PatientBirthDate, s.StudyDate), s.PatientSex ?? ''].filter(Boolean).join(' · ')),
      h('td.col-date', { 'data-label': 'Study date' }, `${dicomDate(s.StudyDate)} ${dicomTime(s.StudyTime)}`.trim()),
      h('td.col-mod', { 'data-label': 'Modality' }, (s.ModalitiesInStudy ?? []).join(', ')),
      h('td.col-desc', { 'data-label': 'Description' }, s.StudyDescription ?? ''),
      h('td.col-acc', { 'data-label': 'Accession' }, s.AccessionNumber ?? ''),
      h('td.col-ref', { 'data-label': 'Referring' }, personName(s.ReferringPhysicianName)),
      h('td.col-status', { 'data-label': 'Status' },
        s.reading_status ? readingBadge(s as ReadingState) : null,
        names(s.NameOfPhysiciansReadingStudy)
          ? h('span.dicom-readers', { title: 'Name of Physician(s) Reading Study (in the images)' }, names(s.NameOfPhysiciansReadingStudy))
          : null),
      h('td.col-count', { 'data-label': 'Series / images' }, `${s.NumberOfStudyRelatedSeries ?? 0} / ${s.NumberOfStudyRelatedInstances ?? 0}`),
      );
      return row;
    }));
    const start = page.total ? page.offset + 1 : 0;
    const end = page.offset + page.items.length;
    const go = (o: number) => { state.set('offset', String(Math.max(0, o))); void search(); };
    mount(pager,
      h('button', { disabled: page.offset === 0, onclick: () => go(0), 'aria-label': 'First page' }, '«'),
      h('button', { disabled: page.offset === 0, onclick: () => go(page.offset - page.limit), 'aria-label': 'Previous page' }, '‹ Previous'),
      h('span.range', `${start.toLocaleString()}–${end.toLocaleString()} of ${page.total.toLocaleString()}`),
      h('button', { disabled: !page.has_more, onclick: () => go(page.offset + page.limit), 'aria-label': 'Next page' }, 'Next ›'),
      pageSize);
  };

  const select = (s: StudyRow, row: HTMLElement) => {
    tbody.querySelectorAll('tr.selected').forEach((r) => r.classList.remove('selected'));
    row.classList.add('selected');
    void showTimeline(timeline, s);
  };

  for (const el of Object.values(inputs)) el.addEventListener('input', () => schedule());
  modality.addEventListener('change', () => schedule());
  reading.addEventListener('change', () => schedule());
  dateKind.addEventListener('change', () => { syncCustom(); schedule(); });
  dateFrom.addEventListener('change', () => schedule());
  dateTo.addEventListener('change', () => schedule());
  pageSize.addEventListener('change', () => schedule());

  const clearFilters = () => {
    for (const el of Object.values(inputs)) el.value = '';
    modality.value = ''; reading.value = ''; dateKind.value = ''; dateFrom.value = ''; dateTo.value = '';
    syncCustom();
    schedule();
  };

  mount(root,
    header(),
    h('main.browser',
      h('form.filters', { role: 'search', onsubmit: (e: Event) => { e.preventDefault(); schedule(); } },
        Object.values(inputs), modality, reading, dateKind, custom,
        h('button', { type: 'button', onclick: clearFilters }, 'Clear'),
      ),
      h('div.browser-body',
        h('div.table-wrap', h('table.studies', h('thead', headRow), tbody), status, pager),
        timeline,
      ),
    ),
  );
  timeline.hidden = true;
  drawHead();
  await search();
  // While the list is read, load the viewer's code and start its decoders, so that
  // opening a study shows its first image without waiting for them.
  const warm = window.setTimeout(() => {
    void import('../viewer/cs').then((m) => m.initCornerstone()).catch(() => undefined);
  }, 50);
  return () => { window.clearTimeout(timer); window.clearTimeout(warm); };
}

async function showTimeline(box: HTMLElement, s: StudyRow): Promise<void> {
  box.hidden = false;
  if (!s.PatientID) {
    mount(box, h('h2', 'Timeline'), h('p', 'This study has no patient ID, so its priors cannot be found.'));
    return;
  }
  mount(box, h('h2', `Timeline: ${personName(s.PatientName)}`), h('div.spinner'));
  try {
    const q = new URLSearchParams({ PatientID: s.PatientID, sort: '-StudyDate', limit: '200' });
    const page = await getJSON<Page>(`${API}/studies?${q}`);
    mount(box,
      h('div.timeline-head', h('h2', `${personName(s.PatientName)} · ${s.PatientID}`),
        h('button.icon', { onclick: () => { box.hidden = true; }, 'aria-label': 'Close timeline' }, '✕')),
      h('p.muted', `${page.total} ${page.total === 1 ? 'study' : 'studies'}`),
      h('ol.timeline-list', page.items.map((p) => h('li', { class: p.StudyInstanceUID === s.StudyInstanceUID ? 'current' : '' },
        h('a', { href: `/viewer/${p.StudyInstanceUID}`, onclick: link },
          h('span.t-date', dicomDate(p.StudyDate)),
          h('span.t-mod', (p.ModalitiesInStudy ?? []).join(', ')),
          h('span.t-desc', p.StudyDescription || '(no description)'))))),
    );
  } catch (error) {
    mount(box, h('h2', 'Timeline'), h('p.error', describeError(error)));
  }
}

export function header(extra?: Node): HTMLElement {
  const me = session.me;
  const share = session.share;
  return h('header.topbar',
    h('a.brand', { href: '/studies', onclick: link }, h('img', { src: '/favicon.svg', alt: '', width: 24, height: 24 }), h('span', 'Hilum')),
    extra ?? null,
    h('span.spacer'),
    share ? h('span.user', `Shared link${share.expires_at ? ` · until ${new Date(share.expires_at).toLocaleString()}` : ''}`)
      : me && me.via !== 'none' ? h('span.user', { title: `role: ${me.role}` }, me.username) : null,
    share ? h('button.logout', { onclick: async () => { await logout(); location.href = '/login'; } }, 'End')
      : me && me.via !== 'none'
        ? h('button.logout', { onclick: async () => { await logout(); navigate('/login', true); } }, 'Sign out')
        : null,
  );
}
