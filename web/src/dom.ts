// A tiny DOM builder: h('div.cls#id', {attrs}, ...children).
type Child = Node | string | number | null | undefined | false | Child[];
type Attrs = Record<string, unknown>;

export function h<K extends keyof HTMLElementTagNameMap>(
  spec: K | string,
  attrs?: Attrs | Child,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const [tagAndClasses, id] = spec.split('#');
  const [tag, ...classes] = tagAndClasses.split('.');
  const el = document.createElement(tag || 'div') as HTMLElementTagNameMap[K];
  if (id) el.id = id;
  if (classes.length) el.className = classes.join(' ');
  if (attrs !== undefined && (typeof attrs !== 'object' || attrs === null || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs as Child);
  } else if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith('on') && typeof value === 'function') {
        el.addEventListener(key.slice(2).toLowerCase(), value as EventListener);
      } else if (key === 'class') {
        el.className += (el.className ? ' ' : '') + String(value);
      } else if (key === 'style' && typeof value === 'object') {
        Object.assign(el.style, value);
      } else if (key in el && typeof value !== 'string') {
        (el as unknown as Record<string, unknown>)[key] = value;
      } else {
        el.setAttribute(key, value === true ? '' : String(value));
      }
    }
  }
  append(el, children);
  return el;
}

function append(el: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el: Element): void {
  while (el.firstChild) el.removeChild(el.firstChild);
}

export function mount(el: Element, ...children: Child[]): void {
  clear(el);
  append(el, children);
}

let toastTimer: number | undefined;
export function toast(message: string, kind: 'info' | 'error' = 'info', ms = 4000): void {
  let box = document.getElementById('toast');
  if (!box) {
    box = h('div#toast', { role: 'status', 'aria-live': 'polite' });
    document.body.appendChild(box);
  }
  box.textContent = message;
  box.className = `toast ${kind} show`;
  window.clearTimeout(toastTimer);
  toastTimer = window.setTimeout(() => box?.classList.remove('show'), ms);
}

/** A modal dialog; resolves with the value of the submitted input, or null. */
export function promptDialog(title: string, initial = '', label = ''): Promise<string | null> {
  return new Promise((resolve) => {
    const input = h('input', { type: 'text', value: initial, 'aria-label': label || title }) as HTMLInputElement;
    const close = (value: string | null) => {
      backdrop.remove();
      resolve(value);
    };
    const form = h(
      'form.dialog',
      { onsubmit: (e: Event) => { e.preventDefault(); close(input.value); } },
      h('h2', title),
      input,
      h('div.actions',
        h('button', { type: 'button', onclick: () => close(null) }, 'Cancel'),
        h('button.primary', { type: 'submit' }, 'OK')),
    );
    const backdrop = h('div.backdrop', { onkeydown: (e: KeyboardEvent) => { if (e.key === 'Escape') close(null); } }, form);
    document.body.appendChild(backdrop);
    input.focus();
    input.select();
  });
}

export function modal(title: string, body: Node, onClose?: () => void): HTMLElement {
  const close = () => { backdrop.remove(); onClose?.(); };
  const panel = h('div.dialog.wide', { role: 'dialog', 'aria-label': title },
    h('div.dialog-head', h('h2', title), h('button.icon', { onclick: close, title: 'Close', 'aria-label': 'Close' }, '✕')),
    body);
  const backdrop = h('div.backdrop', {
    onclick: (e: Event) => { if (e.target === backdrop) close(); },
    onkeydown: (e: KeyboardEvent) => { if (e.key === 'Escape') close(); },
    tabindex: -1,
  }, panel);
  document.body.appendChild(backdrop);
  backdrop.focus();
  return backdrop;
}
