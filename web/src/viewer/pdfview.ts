// Encapsulated PDF drawn with pdf.js, in the viewer's own pane (no browser PDF plug-in:
// headless browsers and many phones have none). This module, pdf.js and its worker are
// loaded on demand (docs.ts imports it dynamically), so they cost nothing until a PDF is
// opened. Pages are stacked vertically, fit to the pane's width, zoomable; only the pages
// on or near the screen are drawn.
import {
  getDocument,
  GlobalWorkerOptions,
  RenderingCancelledException,
  type PDFDocumentProxy,
  type PDFPageProxy,
  type RenderTask,
} from 'pdfjs-dist';
import workerUrl from 'pdfjs-dist/build/pdf.worker.min.mjs?url';
import { h } from '../dom';

GlobalWorkerOptions.workerSrc = workerUrl;

// pdf.js's data files (the 14 standard fonts, CJK character maps, the JPEG 2000 / JBIG2
// decoders), emitted as separate assets and fetched only when a document needs one.
const DATA_FILES = import.meta.glob(
  [
    '/node_modules/pdfjs-dist/standard_fonts/*.{pfb,ttf}',
    '/node_modules/pdfjs-dist/cmaps/*.bcmap',
    '/node_modules/pdfjs-dist/wasm/*.wasm',
  ],
  { query: '?url&no-inline', import: 'default', eager: true },
) as Record<string, string>;
const DATA_URLS = new Map(Object.entries(DATA_FILES).map(([path, url]) => [path.slice(path.lastIndexOf('/') + 1), url]));

/** Gives pdf.js its data files from the hashed asset names (see DATA_FILES). */
class BinaryDataFactory {
  constructor(_options: unknown) {}

  async fetch({ filename }: { kind: string; filename: string }): Promise<Uint8Array> {
    const url = DATA_URLS.get(filename);
    if (!url) throw new Error(`pdf.js data file ${filename} is not bundled`);
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
  }
}

const ZOOM_STEP = 1.25;
const MIN_ZOOM = 0.25;
const MAX_ZOOM = 8;
const MAX_CANVAS_PIXELS = 16_777_216; // per page canvas (Safari's limit)
const KEEP_CANVASES = 12; // drawn pages kept off screen before their canvases are freed
const PAGE_GAP = 10;

interface Slot {
  index: number;
  el: HTMLDivElement;
  width: number; // CSS pixels at scale 1 (PDF points)
  height: number;
  page?: PDFPageProxy;
  canvas?: HTMLCanvasElement;
  drawnScale?: number;
  task?: RenderTask;
  visible: boolean;
  lastSeen: number;
}

const open = new Set<PdfView>();
let sweeper: number | undefined;

/** Frees the documents whose pane has been closed (the viewer just removes the element). */
function sweep(): void {
  for (const view of open) if (!view.root.isConnected) view.destroy();
  if (!open.size && sweeper !== undefined) {
    clearInterval(sweeper);
    sweeper = undefined;
  }
}

class PdfView {
  readonly scroller: HTMLDivElement;
  readonly pagesEl: HTMLDivElement;
  private slots: Slot[] = [];
  private zoom = 1; // relative to fit-to-width
  private scale = 1;
  private observer?: IntersectionObserver;
  private resize?: ResizeObserver;
  private tick = 0;
  private destroyed = false;

  constructor(
    readonly root: HTMLElement,
    readonly pdf: PDFDocumentProxy,
    private readonly pageLabel: HTMLElement,
    private readonly zoomLabel: HTMLElement,
  ) {
    this.scroller = h('div.pdf-scroll', { tabindex: '0', 'aria-label': 'Document pages' }) as HTMLDivElement;
    this.pagesEl = h('div.pdf-pages') as HTMLDivElement;
    this.scroller.appendChild(this.pagesEl);
  }

  async start(): Promise<void> {
    // Page sizes first (cheap: page dictionaries only), so that the scroll height is right.
    for (let i = 1; i <= this.pdf.numPages; i++) {
      const page = await this.pdf.getPage(i);
      if (this.destroyed) return;
      const viewport = page.getViewport({ scale: 1 });
      const el = h('div.pdf-page', { 'data-page': String(i), 'aria-label': `Page ${i}` }) as HTMLDivElement;
      this.slots.push({ index: i - 1, el, width: viewport.width, height: viewport.height, page, visible: false, lastSeen: 0 });
      this.pagesEl.appendChild(el);
    }
    this.observer = new IntersectionObserver((entries) => this.onIntersect(entries), {
      root: this.scroller,
      rootMargin: '50% 0px',
    });
    for (const slot of this.slots) this.observer.observe(slot.el);
    this.resize = new ResizeObserver(() => this.layout());
    this.resize.observe(this.scroller);
    this.scroller.addEventListener('scroll', () => this.updatePageLabel(), { passive: true });
    this.layout();
  }

  /** The scale that fits the widest page to the pane's width. */
  private fitScale(): number {
    const width = this.scroller.clientWidth - 2 * PAGE_GAP;
    const widest = Math.max(...this.slots.map((s) => s.width), 1);
    return width > 0 ? width / widest : 1;
  }

  layout(): void {
    if (this.destroyed || !this.slots.length || this.scroller.clientWidth === 0) return;
    const scale = this.fitScale() * this.zoom;
    if (Math.abs(scale - this.scale) < 1e-3 && this.slots[0].el.style.width) return;
    const anchor = this.scroller.scrollHeight > 0 ? this.scroller.scrollTop / this.scroller.scrollHeight : 0;
    this.scale = scale;
    for (const slot of this.slots) {
      slot.el.style.width = `${Math.floor(slot.width * scale)}px`;
      slot.el.style.height = `${Math.floor(slot.height * scale)}px`;
    }
    this.scroller.scrollTop = anchor * this.scroller.scrollHeight;
    this.zoomLabel.textContent = `${Math.round(((scale * 72) / 96) * 100)}%`; // 100%: actual size
    this.updatePageLabel();
    this.drawVisible();
  }

  setZoom(zoom: number | 'fit'): void {
    this.zoom = zoom === 'fit' ? 1 : Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, zoom));
    this.root.dataset.zoom = this.zoom.toFixed(3);
    this.layout();
  }

  zoomBy(factor: number): void {
    this.setZoom(this.zoom * factor);
  }

  private onIntersect(entries: IntersectionObserverEntry[]): void {
    if (!this.root.isConnected) return sweep();
    for (const entry of entries) {
      const slot = this.slots[Number((entry.target as HTMLElement).dataset.page) - 1];
      if (slot) slot.visible = entry.isIntersecting;
    }
    this.drawVisible();
  }

  private drawVisible(): void {
    this.tick++;
    for (const slot of this.slots) {
      if (!slot.visible) continue;
      slot.lastSeen = this.tick;
      if (slot.drawnScale !== this.scale) void this.draw(slot);
    }
    // Free the canvases of pages long off screen when the document is long.
    const drawn = this.slots.filter((s) => s.canvas && !s.visible).sort((a, b) => a.lastSeen - b.lastSeen);
    for (const slot of drawn.slice(0, Math.max(0, drawn.length - KEEP_CANVASES))) this.release(slot);
  }

  private release(slot: Slot): void {
    slot.task?.cancel();
    slot.task = undefined;
    if (slot.canvas) {
      slot.canvas.width = slot.canvas.height = 0;
      slot.canvas.remove();
    }
    slot.canvas = undefined;
    slot.drawnScale = undefined;
  }

  private async draw(slot: Slot): Promise<void> {
    const page = slot.page;
    if (!page || this.destroyed) return;
    const scale = this.scale;
    slot.task?.cancel();
    let output = window.devicePixelRatio || 1;
    const pixels = slot.width * slot.height * (scale * output) ** 2;
    if (pixels > MAX_CANVAS_PIXELS) output *= Math.sqrt(MAX_CANVAS_PIXELS / pixels);
    const viewport = page.getViewport({ scale: scale * output });
    // Drawn off screen, then swapped in: the old drawing stays until the new one is ready.
    const canvas = h('canvas.pdf-canvas') as HTMLCanvasElement;
    canvas.width = Math.max(1, Math.floor(viewport.width));
    canvas.height = Math.max(1, Math.floor(viewport.height));
    const task = page.render({ canvas, viewport });
    slot.task = task;
    slot.drawnScale = scale;
    try {
      await task.promise;
    } catch (error) {
      if (slot.task === task) slot.drawnScale = undefined;
      if (error instanceof RenderingCancelledException) return;
      slot.el.replaceChildren(h('p.pdf-page-error', `Page ${slot.index + 1} cannot be drawn: ${(error as Error).message}`));
      slot.el.dataset.state = 'error';
      return;
    } finally {
      if (slot.task === task) slot.task = undefined;
    }
    if (this.destroyed || slot.drawnScale !== scale) return;
    if (slot.canvas) {
      slot.canvas.width = slot.canvas.height = 0;
      slot.canvas.remove();
    }
    slot.canvas = canvas;
    slot.el.replaceChildren(canvas);
    slot.el.dataset.state = 'drawn';
    this.root.dataset.drawn = String(this.slots.filter((s) => s.canvas).length);
  }

  /** "page N of M": the page at the top third of the pane. */
  private updatePageLabel(): void {
    const line = this.scroller.scrollTop + this.scroller.clientHeight / 3;
    let current = 1;
    for (const slot of this.slots) {
      if (slot.el.offsetTop <= line) current = slot.index + 1;
      else break;
    }
    this.pageLabel.textContent = `page ${current} of ${this.slots.length}`;
    this.root.dataset.page = String(current);
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    open.delete(this);
    this.observer?.disconnect();
    this.resize?.disconnect();
    for (const slot of this.slots) this.release(slot);
    void this.pdf.destroy();
  }
}

function explain(error: unknown): string {
  const name = (error as { name?: string })?.name ?? '';
  const message = (error as Error)?.message ?? String(error);
  if (name === 'InvalidPDFException') return `The file is damaged or is not a PDF (${message}).`;
  if (name === 'PasswordException') return 'The document is protected by a password.';
  return `The document could not be read (${message}).`;
}

/**
 * Shows ``bytes`` (a PDF) in ``body``; ``controls`` receives the page count and zoom
 * buttons. On a damaged document, says so in ``body`` (the caller's download link stays).
 */
export async function showPdf(root: HTMLElement, body: HTMLElement, controls: HTMLElement, bytes: Uint8Array): Promise<void> {
  sweep();
  let pdf: PDFDocumentProxy;
  try {
    // A copy: pdf.js transfers (detaches) the buffer it is given to its worker.
    pdf = await getDocument({
      data: bytes.slice(),
      BinaryDataFactory,
      useWorkerFetch: false,
      isEvalSupported: false, // the Content Security Policy forbids eval
      stopAtErrors: false,
    }).promise;
  } catch (error) {
    root.dataset.state = 'error';
    body.replaceChildren(h('div.doc-error', { role: 'alert' },
      h('p', h('strong', 'This PDF document cannot be shown.')),
      h('p', explain(error)),
      h('p', 'Use Download to save the file and open it in another program.')));
    return;
  }
  const pageLabel = h('span.pdf-pageno', `page 1 of ${pdf.numPages}`);
  const zoomLabel = h('span.pdf-zoom', '');
  const view = new PdfView(root, pdf, pageLabel, zoomLabel);
  open.add(view);
  sweeper ??= window.setInterval(sweep, 10_000);
  controls.replaceChildren(
    pageLabel,
    h('span.pdf-zoom-buttons',
      h('button.btn.small', { type: 'button', title: 'Zoom out', 'aria-label': 'Zoom out', 'data-zoom': 'out', onclick: () => view.zoomBy(1 / ZOOM_STEP) }, '−'),
      h('button.btn.small', { type: 'button', title: 'Fit to width', 'data-zoom': 'fit', onclick: () => view.setZoom('fit') }, 'Fit'),
      h('button.btn.small', { type: 'button', title: 'Zoom in', 'aria-label': 'Zoom in', 'data-zoom': 'in', onclick: () => view.zoomBy(ZOOM_STEP) }, '+'),
      zoomLabel),
  );
  body.replaceChildren(view.scroller);
  root.dataset.pages = String(pdf.numPages);
  await view.start();
  root.dataset.state = 'ready';
}
