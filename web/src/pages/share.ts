import { API, ApiError, describeError, getJSON, openShare, session, type Share } from '../api';
import { h, mount } from '../dom';
import { navigate } from '../router';

/** /s/<token>: open a share link (no account), asking for a PIN when the link has one. */
export async function renderShare(root: HTMLElement, token: string): Promise<() => void> {
  const attempt = async (pin?: string): Promise<void> => {
    mount(root, h('div.center-message', h('div.spinner'), h('p', 'Opening the shared study…')));
    try {
      let share = await openShare(token, pin);
      // De-identified links: the copies are made first; wait for them.
      for (let i = 0; !share.ready && i < 600; i++) {
        mount(root, h('div.center-message', h('div.spinner'), h('p', 'The shared study is being prepared (de-identified copy)…')));
        await new Promise((r) => setTimeout(r, 2000));
        share = { ...share, ...(await getJSON<Share>(`${API}/shares/session`)) };
        session.share = { ...share, token };
      }
      if (!share.study_uids?.length) throw new ApiError(404, 'the link names no study');
      navigate(`/viewer/${share.study_uids[0]}`, true);
    } catch (error) {
      const reason = error instanceof ApiError ? (error.body as { reason?: string } | undefined)?.reason : undefined;
      if (error instanceof ApiError && error.status === 403 && reason === 'locked') {
        showEnd('This share link is locked', error.detail);
      } else if (error instanceof ApiError && error.status === 403) {
        askPin(reason === 'wrong_pin' ? error.detail : pin ? 'Wrong PIN, try again.' : '');
      } else if (error instanceof ApiError && error.status === 410) {
        showEnd('This share link has expired or was revoked', 'Ask the sender for a new link.');
      } else if (error instanceof ApiError && error.status === 404) {
        showEnd('Unknown share link', 'Check that the address was copied completely.');
      } else if (error instanceof ApiError && error.status === 429) {
        showEnd('Too many attempts', 'Wait a while before trying again.');
      } else {
        showEnd('The shared study could not be opened', describeError(error));
      }
    }
  };
  const showEnd = (title: string, text: string) =>
    mount(root, h('div.center-message.error', h('h1', title), h('p', text)));
  const askPin = (message: string) => {
    const pin = h('input', { inputmode: 'numeric', autocomplete: 'one-time-code', required: true, autofocus: true, 'aria-label': 'PIN' }) as HTMLInputElement;
    mount(root, h('main.login-page', h('form.login-card', {
      onsubmit: (e: Event) => { e.preventDefault(); void attempt(pin.value.trim()); },
    },
    h('div.brand', h('img', { src: '/favicon.svg', alt: '', width: 40, height: 40 }), h('h1', 'Shared study')),
    h('p', 'This link is protected by a PIN. Enter the PIN you were given.'),
    h('label', 'PIN', pin),
    h('p.form-error', { role: 'alert' }, message),
    h('button.primary', { type: 'submit' }, 'Open'))));
    pin.focus();
  };
  await attempt();
  return () => {};
}
