// Talking to Hilum: the management API (/api/v1) and DICOMweb (/dicomweb), same origin.
// The session cookie (HttpOnly) authenticates every request; unsafe methods carry the
// CSRF token that login (or opening a share link) answered.

import { take } from './prefetch';

export const API = '/api/v1';
export const DICOMWEB = '/dicomweb';

export class ApiError extends Error {
  constructor(public status: number, public detail: string, public body?: unknown) {
    super(detail);
  }
}

export interface Me {
  username: string;
  role: string;
  permissions: string[];
  all_studies: boolean;
  via: string;
}

export interface Share {
  token: string;
  study_uids: string[];
  expires_at?: string;
  deidentified?: boolean;
  allow_download?: boolean;
  ready?: boolean;
  status?: string;
}

const CSRF_KEY = 'hilum.csrf';
const SHARE_KEY = 'hilum.share';

/** After single sign-on (a redirect), the server hands the CSRF token over in a
 * short-lived readable cookie: keep it like a password login's and drop the cookie. */
export function adoptCsrfCookie(): void {
  const m = /(?:^|;\s*)hilum_csrf=([^;]+)/.exec(document.cookie);
  if (!m) return;
  localStorage.setItem(CSRF_KEY, decodeURIComponent(m[1]));
  sessionStorage.removeItem(SHARE_KEY);
  document.cookie = 'hilum_csrf=; Max-Age=0; Path=/; SameSite=Strict';
}

export const session = {
  me: null as Me | null,
  get csrf(): string | null {
    return localStorage.getItem(CSRF_KEY);
  },
  set csrf(value: string | null) {
    if (value) localStorage.setItem(CSRF_KEY, value);
    else localStorage.removeItem(CSRF_KEY);
  },
  get share(): Share | null {
    const raw = sessionStorage.getItem(SHARE_KEY);
    return raw ? (JSON.parse(raw) as Share) : null;
  },
  set share(value: Share | null) {
    if (value) sessionStorage.setItem(SHARE_KEY, JSON.stringify(value));
    else sessionStorage.removeItem(SHARE_KEY);
  },
  can(permission: string): boolean {
    return !!this.me && this.me.permissions.includes(permission);
  },
};

/** Words for an error, as a person reading the screen needs them. */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.status === 0) return 'Server unreachable: check the network connection or whether Hilum is running.';
    if (error.status === 401) return 'Your session has ended: please sign in again.';
    if (error.status === 403) {
      return /not allowed to see this study/.test(error.detail)
        ? 'You are not allowed to see this study.'
        : `Not allowed: ${error.detail}`;
    }
    if (error.status === 404) {
      // What the caller may not see answers like what does not exist (docs/security.md).
      return /not open to you/.test(error.detail)
        ? 'This study does not exist, or you are not allowed to see it.'
        : `Not found: ${error.detail}`;
    }
    return error.detail || `The server answered ${error.status}`;
  }
  if (error instanceof Error) return error.message;
  return String(error);
}

let onUnauthorized: (() => void) | null = null;
export function setUnauthorizedHandler(handler: () => void): void {
  onUnauthorized = handler;
}

async function problemOf(response: Response): Promise<ApiError> {
  let detail = response.statusText || `HTTP ${response.status}`;
  let body: unknown;
  try {
    const text = await response.text();
    try {
      body = JSON.parse(text);
      const d = (body as { detail?: unknown }).detail;
      if (typeof d === 'string') detail = d;
      else if (d !== undefined) detail = JSON.stringify(d);
    } catch {
      if (text && text.length < 300) detail = text;
    }
  } catch {
    /* body unreadable */
  }
  return new ApiError(response.status, detail, body);
}

export async function request(
  url: string,
  init: RequestInit & { json?: unknown; quiet401?: boolean } = {},
): Promise<Response> {
  const headers = new Headers(init.headers);
  const method = (init.method ?? 'GET').toUpperCase();
  let body = init.body;
  if (init.json !== undefined) {
    headers.set('Content-Type', 'application/json');
    body = JSON.stringify(init.json);
  }
  if (!['GET', 'HEAD', 'OPTIONS'].includes(method) && session.csrf) headers.set('X-CSRF-Token', session.csrf);
  let response: Response;
  try {
    const early = method === 'GET' ? take(url) : null;
    response = await (early ?? fetch(url, { ...init, method, headers, body, credentials: 'same-origin' }));
  } catch {
    throw new ApiError(0, 'server unreachable');
  }
  if (!response.ok) {
    const error = await problemOf(response);
    if (response.status === 401 && !init.quiet401) onUnauthorized?.();
    throw error;
  }
  return response;
}

export async function getJSON<T>(url: string, init: RequestInit & { quiet401?: boolean } = {}): Promise<T> {
  const response = await request(url, { ...init, headers: { Accept: 'application/json', ...(init.headers ?? {}) } });
  if (response.status === 204) return [] as unknown as T;
  return (await response.json()) as T;
}

export async function postJSON<T>(url: string, json: unknown, method = 'POST'): Promise<T> {
  const response = await request(url, { method, json, headers: { Accept: 'application/json' } });
  if (response.status === 204) return undefined as unknown as T;
  return (await response.json()) as T;
}

// ---- authentication ----

export interface Providers {
  oidc?: { enabled: boolean; label?: string; login_url?: string };
}

export async function fetchMe(): Promise<Me | null> {
  try {
    session.me = await getJSON<Me>(`${API}/auth/me`, { quiet401: true });
    return session.me;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      session.me = null;
      return null;
    }
    throw error;
  }
}

export async function login(username: string, password: string): Promise<Me> {
  const answer = await postJSON<{ user: Me; csrf_token: string }>(`${API}/auth/login`, { username, password });
  session.csrf = answer.csrf_token;
  session.share = null;
  session.me = answer.user;
  return answer.user;
}

export async function logout(): Promise<void> {
  try {
    if (session.share) await request(`${API}/shares/session`, { method: 'DELETE', quiet401: true });
    else await request(`${API}/auth/logout`, { method: 'POST', quiet401: true });
  } catch {
    /* already ended */
  }
  session.csrf = null;
  session.share = null;
  session.me = null;
}

/** SSO providers; an older server without the endpoint (404) has none. */
export async function fetchProviders(): Promise<Providers> {
  try {
    return await getJSON<Providers>(`${API}/auth/providers`, { quiet401: true });
  } catch {
    return {};
  }
}

export async function openShare(token: string, pin?: string): Promise<Share> {
  const body: Record<string, string> = { token };
  if (pin) body.pin = pin;
  const answer = await postJSON<Share & { csrf_token?: string }>(`${API}/shares/open`, body);
  if (answer.csrf_token) session.csrf = answer.csrf_token;
  const share: Share = { ...answer, token, ready: answer.ready ?? true };
  delete (share as { csrf_token?: string }).csrf_token;
  session.share = share;
  session.me = null;
  return share;
}
