// Requests a page will need, started before its code has loaded (the viewer's code is
// large): the first answers are then already on their way when it asks for them.
const pending = new Map<string, Promise<Response>>();

export function prefetch(url: string, accept = 'application/dicom+json'): void {
  if (pending.has(url)) return;
  const p = fetch(url, { credentials: 'same-origin', headers: { Accept: accept } });
  p.catch(() => undefined);
  pending.set(url, p);
  setTimeout(() => pending.delete(url), 10000);
}

/** A prefetched answer (once), or null. */
export function take(url: string): Promise<Response> | null {
  const p = pending.get(url);
  if (p) pending.delete(url);
  return p ?? null;
}
