// A study's reading status (unread, in progress, read): the words and badge shown in the
// study browser and the viewer, and the calls that read and set it
// (GET / PUT /api/v1/studies/{uid}/reading). Only an explicit action changes it:
// opening a study does not.
import { API, getJSON, postJSON, session } from './api';
import { h } from './dom';
import './reading.css';

export type ReadingStatus = 'unread' | 'in_progress' | 'read';

export interface ReadingState {
  reading_status: ReadingStatus | string;
  reading_user: string | null;
  reading_changed_at: string | null;
  changed_after_read?: boolean;
}

/** The browser's status filter: label and the API's reading_status value. */
export const STATUS_FILTERS: [string, string][] = [
  ['', 'Any status'],
  ['unread,in_progress', 'To read (unread, in progress)'],
  ['unread', 'Unread'],
  ['in_progress', 'In progress'],
  ['read', 'Read'],
];

const LABELS: Record<string, string> = { unread: 'Unread', in_progress: 'In progress', read: 'Read' };
const ICONS: Record<string, string> = { unread: '○', in_progress: '◔', read: '✓' };

/** Who may set the status (radiologists, administrators). */
export function canSetReading(): boolean {
  return session.can('study.reading');
}

export function statusLabel(status: string): string {
  return LABELS[status] ?? status;
}

function when(iso: string | null): string {
  if (!iso) return '';
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return iso;
  const sameDay = t.toDateString() === new Date().toDateString();
  return sameDay ? t.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : t.toLocaleString([], {
    year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit',
  });
}

/** "Unread", "In progress · rad", "Read · rad". */
export function statusText(state: ReadingState): string {
  const label = statusLabel(state.reading_status);
  return state.reading_user && state.reading_status !== 'unread' ? `${label} · ${state.reading_user}` : label;
}

/** A sentence for tooltips and dialogs: who, since when. */
export function statusSentence(state: ReadingState): string {
  const at = when(state.reading_changed_at);
  const who = state.reading_user ?? 'someone';
  let text: string;
  if (state.reading_status === 'in_progress') text = `Being read by ${who}${at ? ` since ${at}` : ''}`;
  else if (state.reading_status === 'read') text = `Read by ${who}${at ? ` at ${at}` : ''}`;
  else text = 'Not read yet';
  if (state.changed_after_read) text += '. Images were added or removed after it was read.';
  return text;
}

export function statusIcon(status: string): string {
  return ICONS[status] ?? '•';
}

/** The coloured badge of the study list. */
export function readingBadge(state: ReadingState): HTMLElement {
  const status = state.reading_status || 'unread';
  return h('span.reading-badge', {
    class: `reading-${status}`, 'data-status': status, title: statusSentence(state),
  }, statusText(state), state.changed_after_read ? h('span.reading-new', { 'aria-label': 'changed after read' }, ' +new') : null);
}

export async function fetchReading(studyUid: string): Promise<ReadingState> {
  return getJSON<ReadingState>(`${API}/studies/${encodeURIComponent(studyUid)}/reading`);
}

export async function setReading(studyUid: string, status: ReadingStatus, force = false): Promise<ReadingState> {
  return postJSON<ReadingState>(`${API}/studies/${encodeURIComponent(studyUid)}/reading`, { status, force }, 'PUT');
}
