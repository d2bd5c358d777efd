// The viewer's reading control: a toolbar button showing the study's reading status
// ("○ Unread", "◔ In progress · rad", "✓ Read · rad") that lets a radiologist start
// reading, mark the study read or unread again. Shown only to roles with the
// study.reading permission. Opening a study never changes its status: only these
// explicit actions do. When another radiologist has the study in progress the server
// answers 409; the dialog says who and offers to take it over (force).
import { ApiError, describeError, session } from '../api';
import { h, mount, toast } from '../dom';
import {
  canSetReading, fetchReading, setReading, statusIcon, statusLabel, statusSentence, statusText,
  type ReadingState, type ReadingStatus,
} from '../reading';

interface Action {
  status: ReadingStatus;
  label: string;
  force?: boolean;
  primary?: boolean;
}

/** The toolbar's reading control for ``studyUid`` (an empty node for roles without the permission). */
export function readingControl(studyUid: string): Node {
  if (!canSetReading()) return document.createDocumentFragment();
  const button = h('button.reading-button', {
    title: 'Reading status', 'aria-haspopup': 'dialog', 'data-status': 'loading', disabled: true,
  }, '… Status') as HTMLButtonElement;
  const wrap = h('span.reading-control', { style: { display: 'contents' } }, h('span.sep'), button);
  const show = (state: ReadingState) => {
    button.dataset.status = state.reading_status;
    button.textContent = `${statusIcon(state.reading_status)} ${statusText(state)}${state.changed_after_read ? ' +new' : ''}`;
    button.title = `${statusSentence(state)}. Click to change the reading status.`;
    button.disabled = false;
  };
  let current: ReadingState | null = null;
  const update = (state: ReadingState) => { current = state; show(state); };
  button.addEventListener('click', async () => {
    // The newest state first: another radiologist may have started meanwhile.
    try {
      update(await fetchReading(studyUid));
    } catch {
      /* offer what is known */
    }
    if (current) openDialog(studyUid, current, update);
  });
  fetchReading(studyUid).then(update).catch(() => { wrap.hidden = true; });
  return wrap;
}

function actionsFor(state: ReadingState): Action[] {
  const me = session.me?.username ?? '';
  const mine = state.reading_user === me;
  switch (state.reading_status) {
    case 'in_progress':
      return mine
        ? [{ status: 'read', label: 'Mark read', primary: true }, { status: 'unread', label: 'Stop reading (mark unread)' }]
        : [
          { status: 'in_progress', label: 'Take over', force: true, primary: true },
          { status: 'read', label: 'Mark read (take over)', force: true },
        ];
    case 'read':
      return [
        ...(state.changed_after_read ? [{ status: 'read' as const, label: 'Mark read again', primary: true }] : []),
        { status: 'in_progress', label: 'Read again' },
        { status: 'unread', label: 'Mark unread' },
      ];
    default:
      return [{ status: 'in_progress', label: 'Start reading', primary: true }, { status: 'read', label: 'Mark read' }];
  }
}

function openDialog(studyUid: string, initial: ReadingState, update: (s: ReadingState) => void): void {
  const close = () => backdrop.remove();
  const text = h('p.reading-state');
  const error = h('p.reading-error', { role: 'alert' });
  const actions = h('div.actions');
  const panel = h('div.dialog.reading-dialog', { role: 'dialog', 'aria-label': 'Reading status' },
    h('div.dialog-head', h('h2', 'Reading status'), h('button.icon', { onclick: close, title: 'Close', 'aria-label': 'Close' }, '✕')),
    text, error, actions);
  const backdrop = h('div.backdrop', {
    onclick: (e: Event) => { if (e.target === backdrop) close(); },
    onkeydown: (e: KeyboardEvent) => { if (e.key === 'Escape') { e.stopPropagation(); close(); } },
    tabindex: -1,
  }, panel);

  const run = async (action: Action, buttons: HTMLButtonElement[]) => {
    buttons.forEach((b) => { b.disabled = true; });
    error.textContent = '';
    try {
      const state = await setReading(studyUid, action.status, action.force ?? false);
      update(state);
      close();
      toast(`${statusLabel(state.reading_status)}: ${statusSentence(state)}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) {
        // Someone else has the study in progress (perhaps since this dialog opened).
        const body = (e.body ?? {}) as Partial<ReadingState>;
        const who = body.reading_user ?? 'another user';
        const conflict: ReadingState = {
          reading_status: 'in_progress', reading_user: who, reading_changed_at: body.reading_changed_at ?? null,
        };
        update(conflict);
        draw(conflict, `${who} is reading this study. Take it over?`, [
          { status: action.status, label: action.status === 'read' ? 'Take over and mark read' : 'Take over', force: true, primary: true },
        ]);
        return;
      }
      error.textContent = describeError(e);
      buttons.forEach((b) => { b.disabled = false; });
    }
  };

  const draw = (state: ReadingState, note?: string, only?: Action[]) => {
    text.textContent = `${statusSentence(state)}.`;
    error.textContent = note ?? '';
    const list = only ?? actionsFor(state);
    const buttons: HTMLButtonElement[] = [];
    for (const action of list) {
      buttons.push(h(action.primary ? 'button.primary' : 'button', {
        type: 'button', 'data-action': action.status, 'data-force': action.force ? 'true' : 'false',
        onclick: () => void run(action, buttons),
      }, action.label) as HTMLButtonElement);
    }
    mount(actions, buttons, h('button', { type: 'button', onclick: close }, 'Cancel'));
    (buttons[0] ?? actions.lastElementChild as HTMLElement | null)?.focus();
  };

  document.body.appendChild(backdrop);
  draw(initial);
}
