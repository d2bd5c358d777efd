import './styles.css';
import { adoptCsrfCookie, fetchMe, session, setUnauthorizedHandler, describeError } from './api';
import { h, mount } from './dom';
import { link, navigate, onNavigate, parse } from './router';
import { renderLogin } from './pages/login';
import { renderShare } from './pages/share';
import { renderBrowser } from './pages/browser';
import { prefetch } from './prefetch';
import { seriesUrl, studyUrl } from './viewer/urls';

const root = document.getElementById('app')!;
let cleanup: (() => void) | null = null;

function currentPath(): string {
  return location.pathname + location.search;
}

setUnauthorizedHandler(() => {
  if (session.share) {
    mount(root, h('div.center-message', h('h1', 'This share link has ended'),
      h('p', 'The link expired or was revoked. Ask the sender for a new one.')));
    return;
  }
  if (parse(location).name !== 'login') navigate(`/login?next=${encodeURIComponent(currentPath())}`, true);
});

async function render(): Promise<void> {
  cleanup?.();
  cleanup = null;
  const route = parse(location);
  document.body.dataset.route = route.name;
  try {
    if (route.name === 'share') {
      cleanup = await renderShare(root, route.token);
      return;
    }
    if (route.name === 'login') {
      cleanup = await renderLogin(root, route.next);
      return;
    }
    if (!session.me) {
      const me = await fetchMe();
      if (!me) {
        navigate(`/login?next=${encodeURIComponent(currentPath())}`, true);
        return;
      }
    }
    if (route.name === 'studies') {
      if (session.share) {
        navigate(`/viewer/${session.share.study_uids[0]}`, true);
        return;
      }
      cleanup = await renderBrowser(root, route.params);
    } else if (route.name === 'viewer') {
      // The same URLs as viewer/study.ts asks for (kept in sync by studyUrl/seriesUrl).
      prefetch(studyUrl(route.study));
      prefetch(seriesUrl(route.study));
      const { renderViewer } = await import('./viewer/viewer');
      cleanup = await renderViewer(root, route.study, route.params);
    } else {
      mount(root, h('div.center-message', h('h1', 'Page not found'), h('p', route.path),
        h('a', { href: '/studies', onclick: link }, 'Back to the study list')));
    }
  } catch (error) {
    mount(root, h('div.center-message.error', h('h1', 'Something went wrong'), h('p', describeError(error)),
      h('button', { onclick: () => render() }, 'Try again')));
  }
}

adoptCsrfCookie();
onNavigate(() => void render());
void render();
