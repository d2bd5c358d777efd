import { ApiError, describeError, fetchMe, fetchProviders, login } from '../api';
import { h, mount } from '../dom';
import { navigate } from '../router';

export async function renderLogin(root: HTMLElement, next: string): Promise<() => void> {
  // Already signed in (or authentication switched off): go on.
  try {
    if (await fetchMe()) {
      navigate(safeNext(next), true);
      return () => {};
    }
  } catch {
    /* show the form; its submit reports the error */
  }
  const error = h('p.form-error', { role: 'alert' });
  const username = h('input', { name: 'username', autocomplete: 'username', required: true, autofocus: true }) as HTMLInputElement;
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true }) as HTMLInputElement;
  const submit = h('button.primary', { type: 'submit' }, 'Sign in') as HTMLButtonElement;
  const sso = h('div.sso');
  const form = h('form.login-card', {
    onsubmit: async (event: Event) => {
      event.preventDefault();
      error.textContent = '';
      submit.disabled = true;
      submit.textContent = 'Signing in…';
      try {
        await login(username.value.trim(), password.value);
        navigate(safeNext(next), true);
      } catch (e) {
        error.textContent = e instanceof ApiError && e.status === 401
          ? `Sign-in failed: ${e.detail}`
          : describeError(e);
        password.select();
      } finally {
        submit.disabled = false;
        submit.textContent = 'Sign in';
      }
    },
  },
  h('div.brand', h('img', { src: '/favicon.svg', alt: '', width: 40, height: 40 }), h('h1', 'Hilum')),
  h('label', 'User name', username),
  h('label', 'Password', password),
  error,
  submit,
  sso,
  );
  mount(root, h('main.login-page', form));
  const providers = await fetchProviders();
  if (providers.oidc?.enabled && providers.oidc.login_url) {
    const url = new URL(providers.oidc.login_url, location.origin);
    url.searchParams.set('next', safeNext(next));
    mount(sso, h('div.or', 'or'), h('a.button.sso-button', { href: url.pathname + url.search }, providers.oidc.label || 'Sign in with SSO'));
  }
  return () => {};
}

/** Only same-app paths after login (no open redirect). */
function safeNext(next: string): string {
  return next.startsWith('/') && !next.startsWith('//') && !next.startsWith('/login') ? next : '/studies';
}
