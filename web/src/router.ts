// History-API routing: /login, /studies, /viewer/<StudyInstanceUID>, /s/<token>.

export type Route =
  | { name: 'login'; next: string }
  | { name: 'studies'; params: URLSearchParams }
  | { name: 'viewer'; study: string; params: URLSearchParams }
  | { name: 'share'; token: string }
  | { name: 'notfound'; path: string };

export function parse(location: Location): Route {
  const path = location.pathname.replace(/\/+$/, '') || '/';
  const params = new URLSearchParams(location.search);
  if (path === '/login') return { name: 'login', next: params.get('next') || '/studies' };
  if (path === '/' || path === '/studies') return { name: 'studies', params };
  let m = path.match(/^\/viewer\/([0-9.]+)$/);
  if (m) return { name: 'viewer', study: m[1], params };
  m = path.match(/^\/s\/([^/]+)$/);
  if (m) return { name: 'share', token: decodeURIComponent(m[1]) };
  return { name: 'notfound', path };
}

let listener: (() => void) | null = null;

export function onNavigate(handler: () => void): void {
  listener = handler;
  window.addEventListener('popstate', handler);
}

export function navigate(url: string, replace = false): void {
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  listener?.();
}

/** Update the query string without a new page render (browser filters). */
export function setQuery(params: URLSearchParams): void {
  const q = params.toString();
  history.replaceState(null, '', `${location.pathname}${q ? `?${q}` : ''}`);
}

/** Click handler for in-app links (no page reload; ctrl/middle click still opens a tab). */
export function link(event: MouseEvent): void {
  const a = event.currentTarget as HTMLAnchorElement;
  if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  navigate(a.getAttribute('href') ?? '/');
}
