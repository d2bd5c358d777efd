// The diagnostic viewer: series panel, viewport grid, tools, hanging of current and prior.
import { API, describeError, postJSON, session } from '../api';
import { dicomDate, num, personName, TAG, type DicomJson } from '../dicom';
import { h, mount, toast } from '../dom';
import { header } from '../pages/browser';
import { link, navigate } from '../router';
import { core, initCornerstone, tools } from './cs';
import { otherObject, renderPDF, renderSR, renderVideo } from './docs';
import { Measurements } from './measure';
import { fillDynamic, fillOrientation, fillStatic, makeCorners, type Corners } from './overlay';
import { fetchPriors, fetchSeries, fetchStudy, frameRate, isDerived, loadSeries, type DisplaySet, type StudyInfo } from './study';
import {
  applyPresentation, clearPresentation, drawPresentation, firstImage, imageRef, isPresentationState, parsePresentationState,
  references, referencesSeries, type Applied, type PresentationState, type Target,
} from './gsps';
import { instanceNumbers, isKeyObject, keySet, parseKeyObject, type KeyObject } from './keyimages';
import { showTags } from './tags';
import { Toolbar } from './toolbar';
import { Mpr } from './mpr';
import { forget, streamSeries } from './bulk';
import { probe } from './probe';
import { readingControl } from './reading';

const ENGINE_ID = 'hilum-engine';
let syncCounter = 0;
export const STACK_GROUP = 'hilum-stack';

export const LAYOUTS: Record<string, [number, number]> = {
  '1x1': [1, 1], '1x2': [1, 2], '2x1': [2, 1], '2x2': [2, 2], '3x3': [3, 3],
};

export interface Cell {
  index: number;
  el: HTMLElement;
  vpEl: HTMLDivElement;
  corners: Corners;
  bar: HTMLElement;
  viewportId: string;
  set: DisplaySet | null;
  enabled: boolean;
  doc: HTMLElement | null;
  cine: boolean;
  ps: PresentationState | null; // the presentation state applied (gsps.ts)
  psApplied: Applied | null;
  svg: SVGSVGElement; // its graphics
  psEl: HTMLElement; // "PS: label", to switch or turn it off
}

export class Viewer {
  root: HTMLElement;
  study!: StudyInfo;
  priors: StudyInfo[] = [];
  sets: DisplaySet[] = [];
  priorSets = new Map<string, DisplaySet[]>();
  engine!: core.RenderingEngine;
  group!: ReturnType<typeof tools.ToolGroupManager.createToolGroup> & object;
  cells: Cell[] = [];
  active = 0;
  layout = '1x1';
  grid = h('div.grid', { role: 'region', 'aria-label': 'Viewports' });
  panel = h('nav.series-panel', { 'aria-label': 'Series' });
  main = h('div.viewer');
  toolbar!: Toolbar;
  measurements!: Measurements;
  mpr: Mpr | null = null;
  sync = true;
  states: PresentationState[] = []; // of the current study and loaded priors
  keyObjects: KeyObject[] = [];
  marked: string[] = []; // imageIds marked as key images, not saved yet
  voiSync: ReturnType<typeof tools.synchronizers.createVOISynchronizer> | null = null;
  private disposers: (() => void)[] = [];
  private overlayPending = new Set<Cell>();
  private lastIndex = new Map<Cell, number>();
  private expected = new Map<Cell, number>();
  private resizeObserver: ResizeObserver | null = null;
  destroyed = false;

  constructor(root: HTMLElement) {
    this.root = root;
  }

  async open(studyUid: string, params: URLSearchParams): Promise<void> {
    mount(this.root, header(), h('div.center-message', h('div.spinner'), h('p', 'Opening the study…')));
    // Study, its series and the code all at once; then the priors (they need the PatientID).
    const seriesOf = fetchSeries({ uid: studyUid } as StudyInfo, false);
    const [study] = await Promise.all([fetchStudy(studyUid), initCornerstone(), seriesOf.catch(() => null)]);
    this.study = study;
    document.title = `${personName(study.patientName)} · ${dicomDate(study.date)} · Hilum`;
    this.sets = await seriesOf;
    for (const set of this.sets) set.study = study;
    const firstImage = this.sets.find((s) => s.kind !== 'sr' && s.kind !== 'pdf' && !isDerived(s));
    // Start the first series' metadata and its first image now: needed whatever the hanging.
    if (firstImage && !params.get('series')) {
      void loadSeries(firstImage)
        .then(async (set) => {
          if (set.imageIds[0]) {
            await core.imageLoader.loadAndCacheImage(set.imageIds[0], {
              priority: -5, requestType: core.Enums.RequestType.Interaction,
            });
          }
        })
        .catch(() => undefined);
    }
    // Priors: a failure there must not stop the current study from opening.
    try {
      this.priors = await fetchPriors(study);
    } catch {
      this.priors = [];
    }
    if (this.priors[0]) {
      try {
        this.priorSets.set(this.priors[0].uid, await fetchSeries(this.priors[0], true));
      } catch {
        /* shown without prior */
      }
    }
    this.build();
    this.engine = new core.RenderingEngine(ENGINE_ID);
    tools.ToolGroupManager.destroyToolGroup(STACK_GROUP);
    this.group = tools.ToolGroupManager.createToolGroup(STACK_GROUP)!;
    this.toolbar.setupTools(this.group);
    this.measurements = new Measurements(this);
    this.hang(params);
    this.resizeObserver = new ResizeObserver(() => this.engine?.resize(true, true));
    this.resizeObserver.observe(this.grid);
    this.installEvents();
    void this.measurements.restore();
    void this.loadDerived(this.sets);
    const priorSets = this.priors[0] ? this.priorSets.get(this.priors[0].uid) : undefined;
    if (priorSets) void this.loadDerived(priorSets);
  }

  /** Presentation states and key object selections among these series (PR, KO): parsed,
   * each key object made a display set (added to `sets`), the panel and the cells updated. */
  private async loadDerived(sets: DisplaySet[]): Promise<void> {
    const derived = sets.filter(isDerived);
    if (!derived.length) return;
    const results = await Promise.allSettled(derived.map(loadSeries));
    if (this.destroyed) return;
    let failed = 0;
    results.forEach((result, i) => {
      if (result.status === 'rejected') {
        failed++;
        return;
      }
      const series = derived[i];
      for (const json of series.instances ?? []) {
        if (isPresentationState(json)) {
          const ps = parsePresentationState(json);
          if (!this.states.some((s) => s.sop === ps.sop)) this.states.push(ps);
        } else if (isKeyObject(json)) {
          const ko = parseKeyObject(json);
          if (this.keyObjects.some((k) => k.sop === ko.sop)) continue;
          this.keyObjects.push(ko);
          sets.push(keySet(ko, series, (uid) => this.allSets().find((s) => s.seriesUid === uid && !s.keyObject)));
        }
      }
    });
    this.states.sort((a, b) => `${a.date}${a.time}`.localeCompare(`${b.date}${b.time}`));
    if (failed) toast(`${failed} presentation state / key image series could not be read`, 'error');
    this.drawPanel();
    for (const cell of this.cells) {
      this.updateStateBadge(cell);
      this.updateOverlay(cell);
    }
  }

  // ---- page structure ----

  private build(): void {
    this.toolbar = new Toolbar(this);
    this.toolbar.el.append(readingControl(this.study.uid)); // reading status (radiologists)
    const share = session.share;
    const back = share ? null : h('a.button', { href: '/studies', onclick: link, title: 'Back to the study list' }, '‹ Studies');
    const title = h('span.study-title', `${personName(this.study.patientName)} · ${this.study.patientId} · ${dicomDate(this.study.date)} ${this.study.description}`);
    mount(this.root,
      header(h('span', { style: { display: 'contents' } }, back, h('button.panel-toggle', {
        onclick: () => this.main.classList.toggle('panel-open'), 'aria-label': 'Series', title: 'Show or hide the series',
      }, '☰ Series'), title)),
      share?.deidentified ? h('div.viewer-banner', 'Shared study: de-identified copy.') : null,
      this.toolbar.el,
      this.main,
    );
    mount(this.main, this.panel, this.grid);
    this.drawPanel();
  }

  drawPanel(): void {
    const thumbs = (sets: DisplaySet[]) => sets.map((set) => {
      const shown = this.cells.some((c) => c.set === set);
      const el = h('button.thumb', {
        class: shown ? 'shown' : '',
        draggable: true,
        'data-series': set.key,
        title: `${set.description || set.modality} · ${set.count} images — drag into a viewport, or click to show it in the active one`,
        ondragstart: (e: DragEvent) => {
          e.dataTransfer?.setData('application/x-hilum-series', set.key);
          e.dataTransfer?.setData('text/plain', set.key);
        },
        onclick: () => {
          void this.show(this.active, set);
          this.main.classList.remove('panel-open');
        },
      },
      set.kind === 'sr' ? h('div.ph', 'SR') : set.kind === 'pdf' ? h('div.ph', 'PDF')
        : h('img', { src: set.thumbnail, alt: '', loading: 'lazy', onerror: (e: Event) => {
          (e.target as HTMLElement).replaceWith(h('div.ph', set.modality || '?'));
        } }),
      set.keyObject ? h('div.meta', h('span', '★ Key images'), h('span', String(set.count)))
        : h('div.meta', h('span', `S${set.number ?? '?'} ${set.modality}`), h('span', String(set.count))),
      h('div.desc', set.description || '(no description)'));
      return el;
    });
    // Per study: its series, then its key image sets and presentation states (PR, KO series).
    const section = (sets: DisplaySet[], studyUid: string) => {
      const keys = sets.filter((s) => s.keyObject);
      const states = this.states.filter((ps) => ps.studyUid === studyUid).map((ps) => this.stateEntry(ps));
      return [
        thumbs(sets.filter((s) => !s.keyObject && !isDerived(s))),
        keys.length ? h('h3', 'Key images') : null, thumbs(keys),
        states.length ? h('h3', 'Presentation states') : null, states,
      ];
    };
    const priorBlocks = this.priors.map((p) => {
      const sets = this.priorSets.get(p.uid);
      return h('section',
        h('div.study-head.prior', `Prior ${dicomDate(p.date)} · ${p.modalities.join(',')}`, h('br'), p.description),
        sets ? section(sets, p.uid) : h('button', {
          style: { margin: '6px 8px' },
          onclick: async () => {
            try {
              const sets = await fetchSeries(p, true);
              this.priorSets.set(p.uid, sets);
              this.drawPanel();
              void this.loadDerived(sets);
            } catch (error) {
              toast(describeError(error), 'error');
            }
          },
        }, 'Load series'));
    });
    mount(this.panel,
      h('div.study-head', `Current ${dicomDate(this.study.date)}`, h('br'), this.study.description),
      section(this.sets, this.study.uid),
      this.priors.length ? h('h3', 'Priors') : null,
      priorBlocks);
  }

  private stateEntry(ps: PresentationState): HTMLElement {
    const target = this.allSets().find((s) => !s.keyObject && referencesSeries(ps, s.seriesUid));
    const images = ps.series.reduce((n, s) => n + s.images.length, 0);
    const who = [personName(ps.creator), dicomDate(ps.date)].filter(Boolean).join(' · ');
    return h('button.thumb.ps-entry', {
      class: this.cells.some((c) => c.ps === ps) ? 'shown' : '',
      'data-ps': ps.sop,
      title: `Presentation state ${ps.label}${ps.description ? ` — ${ps.description}` : ''}: show ${target ? `series ${target.number ?? ''} ` : ''}as it was presented (window, rotation, zoom, annotations)`,
      onclick: () => {
        void this.showPresentation(ps);
        this.main.classList.remove('panel-open');
      },
    },
    h('div.meta', h('b', `PS: ${ps.label}`), h('span', target ? `S${target.number ?? '?'}` : '')),
    ps.description ? h('div.desc', ps.description) : null,
    h('div.meta', h('span', who), h('span', `${images} im`)));
  }

  setLayout(name: string, assign?: (DisplaySet | null)[]): void {
    if (this.mpr) this.mpr.exit();
    const [rows, cols] = LAYOUTS[name] ?? [1, 1];
    this.layout = name;
    const keep = assign ?? this.cells.map((c) => c.set);
    this.teardownCells();
    this.grid.style.gridTemplateRows = `repeat(${rows}, minmax(0, 1fr))`;
    this.grid.style.gridTemplateColumns = `repeat(${cols}, minmax(0, 1fr))`;
    for (let i = 0; i < rows * cols; i++) this.cells.push(this.makeCell(i));
    mount(this.grid, this.cells.map((c) => c.el));
    this.active = Math.min(this.active, this.cells.length - 1);
    this.markActive();
    this.toolbar.syncLayout(name);
    // Fill the cells: what was shown before, then the next series not shown yet.
    const shown = new Set<DisplaySet>();
    this.cells.forEach((_cell, i) => {
      const set = keep[i] ?? this.nextUnshown(shown);
      if (set) {
        shown.add(set);
        void this.show(i, set);
      }
    });
  }

  private nextUnshown(shown: Set<DisplaySet>): DisplaySet | null {
    return this.sets.find((s) => !shown.has(s) && s.kind !== 'sr' && s.kind !== 'pdf' && !isDerived(s) && !s.keyObject) ?? null;
  }

  private makeCell(index: number): Cell {
    const vpEl = h('div.vp') as HTMLDivElement;
    vpEl.oncontextmenu = (e) => e.preventDefault();
    const bar = h('div.bar');
    const el = h('div.cell', {
      'data-index': index,
      onpointerdown: () => this.setActive(index),
      ondragover: (e: DragEvent) => { e.preventDefault(); el.classList.add('dragover'); },
      ondragleave: () => el.classList.remove('dragover'),
      ondrop: (e: DragEvent) => {
        e.preventDefault();
        el.classList.remove('dragover');
        const uid = e.dataTransfer?.getData('application/x-hilum-series') || e.dataTransfer?.getData('text/plain');
        const set = this.allSets().find((s) => s.key === uid);
        if (set) {
          this.setActive(index);
          void this.show(index, set);
        }
      },
    }, vpEl, h('div.loading', bar));
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.classList.add('ps-graphics');
    const psEl = h('div.ps-badge', { hidden: true });
    el.append(svg, psEl);
    const corners = makeCorners(el);
    // Cornerstone's viewport events do not bubble: listen on the viewport element.
    const E = core.Enums.Events;
    vpEl.addEventListener(E.STACK_NEW_IMAGE, () => {
      const cell = this.cells.find((c) => c.vpEl === vpEl);
      if (cell) this.followScroll(cell);
      if (cell?.ps) this.applyState(cell);
    });
    // The presentation state's graphics follow every render (zoom, pan, rotation, image).
    vpEl.addEventListener(E.IMAGE_RENDERED, () => {
      const cell = this.cells.find((c) => c.vpEl === vpEl);
      if (cell) this.drawState(cell);
    });
    for (const name of [E.STACK_NEW_IMAGE, E.VOI_MODIFIED, E.CAMERA_MODIFIED, E.IMAGE_RENDERED]) {
      vpEl.addEventListener(name, () => {
        const cell = this.cells.find((c) => c.vpEl === vpEl);
        if (cell && !this.overlayPending.has(cell)) {
          this.overlayPending.add(cell);
          requestAnimationFrame(() => { this.overlayPending.delete(cell); this.updateOverlay(cell); });
        }
      });
    }
    return {
      index, el, vpEl, corners, bar, viewportId: `vp-${index}-${Date.now() % 100000}`, set: null, enabled: false, doc: null, cine: false,
      ps: null, psApplied: null, svg, psEl,
    };
  }

  allSets(): DisplaySet[] {
    return [...this.sets, ...[...this.priorSets.values()].flat()];
  }

  setActive(index: number): void {
    if (this.active === index) return;
    this.active = index;
    this.markActive();
    this.toolbar.syncCell(this.cells[index]);
    this.updateOverlay(this.cells[index]);
  }

  private markActive(): void {
    this.cells.forEach((c, i) => c.el.classList.toggle('active', i === this.active && this.cells.length > 1));
  }

  private teardownCells(): void {
    for (const cell of this.cells) this.disableCell(cell);
    this.cells = [];
  }

  private disableCell(cell: Cell): void {
    if (cell.cine) this.stopCine(cell);
    if (cell.enabled) {
      try { this.group.removeViewports(ENGINE_ID, cell.viewportId); } catch { /* gone */ }
      try { this.engine.disableElement(cell.viewportId); } catch { /* gone */ }
      cell.enabled = false;
    }
    cell.svg.replaceChildren();
    cell.psEl.hidden = true;
    if (cell.doc) {
      const url = cell.doc.dataset.url;
      if (url) URL.revokeObjectURL(url);
      cell.doc.remove();
      cell.doc = null;
    }
  }

  stackViewport(cell: Cell | undefined = this.cells[this.active]): core.StackViewport | null {
    if (!cell?.enabled) return null;
    const vp = this.engine.getViewport(cell.viewportId);
    return vp instanceof core.StackViewport ? vp : null;
  }

  // ---- showing a series ----

  async show(index: number, set: DisplaySet, ps: PresentationState | null = null): Promise<void> {
    const cell = this.cells[index];
    if (!cell) return;
    this.disableCell(cell);
    cell.set = set;
    cell.ps = ps;
    cell.psApplied = null;
    cell.el.querySelector('.cell-error')?.remove();
    cell.el.querySelector('.empty')?.remove();
    mount(cell.corners.tl); mount(cell.corners.tr); mount(cell.corners.bl); mount(cell.corners.br);
    fillOrientation(cell.corners, null, 0, 0);
    const spinner = h('div.empty', h('div', h('div.spinner'), 'Loading series…'));
    cell.el.appendChild(spinner);
    this.drawPanel();
    try {
      await loadSeries(set);
      if (cell.set !== set || this.destroyed) return;
      spinner.remove();
      if (set.kind === 'image') {
        await this.showStack(cell, set);
      } else {
        const doc = set.kind === 'sr' ? renderSR(set)
          : set.kind === 'pdf' ? await renderPDF(set)
            : set.kind === 'video' ? await renderVideo(set)
              : otherObject(set);
        if (cell.set !== set) return;
        cell.doc = doc;
        cell.el.appendChild(doc);
        fillStatic(cell.corners, set, set.instances?.[0]);
        mount(cell.corners.bl); mount(cell.corners.br); mount(cell.corners.tl); mount(cell.corners.tr);
      }
      if (index === this.active) this.toolbar.syncCell(cell);
    } catch (error) {
      spinner.remove();
      if (cell.set !== set) return;
      cell.el.appendChild(h('div.cell-error', { role: 'alert' }, describeError(error)));
    }
  }

  private async showStack(cell: Cell, set: DisplaySet): Promise<void> {
    this.engine.enableElement({
      viewportId: cell.viewportId,
      type: core.Enums.ViewportType.STACK,
      element: cell.vpEl,
      defaultOptions: { background: [0, 0, 0] },
    });
    cell.enabled = true;
    this.group.addViewport(cell.viewportId, ENGINE_ID);
    const vp = this.engine.getViewport(cell.viewportId) as core.StackViewport;
    fillStatic(cell.corners, set, set.instances?.[0]);
    // The first image, or the first one the presentation state applies to.
    const ps = cell.ps;
    const start = ps ? Math.max(0, firstImage(ps, set.imageIds)) : 0;
    const t0 = performance.now();
    probe.stackRequested(set, t0);
    await vp.setStack(set.imageIds, start);
    if (cell.ps) this.applyState(cell);
    vp.render();
    probe.firstImage(set, performance.now());
    this.updateStateBadge(cell);
    this.updateOverlay(cell);
    this.prefetch(cell, set);
    this.applySync();
    this.measurements.refresh();
  }

  /** Fetch the rest of the series after the first image is on screen (progress bar):
   * the whole series in one streamed request (bulk.ts), decoded as instances arrive; what
   * that could not deliver, frame by frame. */
  private prefetch(cell: Cell, set: DisplaySet): void {
    const ids = set.imageIds;
    const total = ids.length;
    const started = new Set<string>();
    let done = 0;
    let failed = 0;
    let streamed = 0;
    const bar = cell.bar;
    const cancelled = () => cell.set !== set || this.destroyed;
    const update = () => {
      bar.style.width = `${(100 * done) / total}%`;
      bar.parentElement!.hidden = done >= total;
      if (done >= total) {
        probe.seriesLoaded(set, performance.now(), failed, streamed);
        if (failed) toast(`${failed} image(s) of this series could not be loaded`, 'error');
      }
    };
    const load = async (id: string) => {
      if (started.has(id)) return;
      started.add(id);
      try {
        await core.imageLoader.loadAndCacheImage(id, { priority: 5, requestType: core.Enums.RequestType.Prefetch });
      } catch {
        failed++;
      }
      done++;
      update();
    };
    const bySop = new Map<string, string[]>();
    for (const id of ids) {
      const sop = /instances\/([^/]+)\/frames/.exec(id)?.[1] ?? '';
      bySop.set(sop, [...(bySop.get(sop) ?? []), id]);
    }
    const oneByOne = () => {
      const queue = ids.filter((id) => !started.has(id));
      const worker = async () => {
        for (let next = queue.shift(); next; next = queue.shift()) {
          if (cancelled()) return;
          await load(next);
        }
      };
      for (let k = 0; k < 6; k++) void worker();
    };
    update();
    // A key image set's images come from other series: frame by frame.
    const streaming = set.keyObject ? Promise.resolve() : streamSeries(set, (sop, count) => {
      const frameIds = bySop.get(sop) ?? [];
      streamed += frameIds.filter((id) => !started.has(id)).length;
      void Promise.all(frameIds.map(load)).then(() => forget(sop, count));
    }, cancelled);
    void streaming.then(oneByOne, oneByOne);
  }

  updateOverlay(cell: Cell): void {
    const vp = this.stackViewport(cell);
    const set = cell.set;
    if (!vp || !set) return;
    const index = vp.getCurrentImageIdIndex();
    const instance = this.instanceAt(set, index);
    const props = vp.getProperties();
    let zoom: number | undefined;
    try { zoom = vp.getZoom(); } catch { zoom = undefined; }
    const imageId = vp.getCurrentImageId();
    fillDynamic(cell.corners, set, index, instance, props.voiRange, zoom, cell.cine ? `▶ ${this.toolbar.fps()} fps` : '', this.keyMark(set, imageId, instance));
    if (cell === this.cells[this.active]) this.toolbar.syncKeys(!!imageId && this.marked.includes(imageId), this.marked.length);
    const hasGeometry = !!instance?.['00200037']?.Value?.length;
    const rect = cell.vpEl.getBoundingClientRect();
    fillOrientation(cell.corners, hasGeometry ? (p) => Array.from(vp.canvasToWorld(p)) : null, rect.width, rect.height);
  }

  instanceAt(set: DisplaySet, imageIndex: number): DicomJson | undefined {
    const id = set.imageIds[imageIndex];
    if (!id) return undefined;
    const sop = /instances\/([^/]+)\/frames/.exec(id)?.[1];
    return set.instances?.find((i) => i['00080018']?.Value?.[0] === sop);
  }

  /** The overlay's key image line: in a key image set, where the image comes from; in a
   * series, a star when a key object selection names the image. */
  private keyMark(set: DisplaySet, imageId: string | undefined, instance: DicomJson | undefined): string {
    if (!imageId) return '';
    const { sop, frame } = imageRef(imageId);
    if (set.keyObject) {
      const source = this.allSets().find((s) => !s.keyObject && s.imageIds.includes(imageId));
      return `★ from S${source?.number ?? '?'} #${num(instance, TAG.InstanceNumber) ?? '?'}`;
    }
    const titles = this.keyObjects
      .filter((ko) => ko.refs.some((r) => r.sop === sop && (!r.frames.length || r.frames.includes(frame))))
      .map((ko) => ko.title);
    const saved = titles.length ? `★ Key image (${[...new Set(titles)].join(', ')})` : '';
    const pending = this.marked.includes(imageId) ? '☆ Marked, not saved' : '';
    return [saved, pending].filter(Boolean).join(' · ');
  }

  // ---- marking key images (saved as a Key Object Selection document) ----

  /** Mark or unmark the image on screen in the active viewport. */
  toggleKeyImage(): void {
    const cell = this.cells[this.active];
    const vp = this.stackViewport(cell);
    const imageId = vp?.getCurrentImageId();
    if (!cell?.set || !imageId) return toast('Show an image to mark it as a key image', 'error');
    if (cell.set.study.uid !== this.study.uid) return toast('Key images are marked in the current study, not in priors', 'error');
    const at = this.marked.indexOf(imageId);
    if (at >= 0) this.marked.splice(at, 1);
    else this.marked.push(imageId);
    this.updateOverlay(cell);
  }

  /** Store the marked images (whole instances, in the order marked) as one document. */
  async saveKeyImages(): Promise<void> {
    const sops = [...new Set(this.marked.map((id) => imageRef(id).sop))];
    if (!sops.length) return;
    this.toolbar.keySaveButton.disabled = true;
    try {
      const saved = await postJSON<{ series_instance_uid: string; sop_instance_uid: string; images: number }>(
        `${API}/studies/${this.study.uid}/key-images`, { sop_instance_uids: sops, title: 'Of Interest' });
      this.marked = [];
      toast(`${saved.images} key image(s) saved`);
      // The document's series: new, or one whose instances are read again.
      const known = this.sets.find((s) => s.seriesUid === saved.series_instance_uid && !s.keyObject);
      if (known) {
        known.loading = undefined;
        known.instances = null;
      } else {
        const fresh = await fetchSeries(this.study, false);
        for (const set of fresh) if (!this.sets.some((s) => s.seriesUid === set.seriesUid)) this.sets.push(set);
      }
      await this.loadDerived(this.sets);
    } catch (error) {
      toast(describeError(error), 'error');
    } finally {
      this.toolbar.keySaveButton.disabled = false;
      for (const cell of this.cells) this.updateOverlay(cell);
    }
  }

  // ---- presentation states (gsps.ts) ----

  private targetOf(cell: Cell): Target | null {
    const vp = this.stackViewport(cell);
    if (!vp || !cell.set) return null;
    const imageId = vp.getCurrentImageId();
    if (!imageId) return null;
    const { sop, frame } = imageRef(imageId);
    return { imageId, sop, frame, instance: this.instanceAt(cell.set, vp.getCurrentImageIdIndex()) };
  }

  /** Apply the cell's presentation state to the image on screen (all of it the first time;
   * then what differs per image). Images the state does not reference are left as they are. */
  private applyState(cell: Cell): void {
    const vp = this.stackViewport(cell);
    const target = this.targetOf(cell);
    if (!vp || !cell.ps || !target) return;
    if (references(cell.ps, target.sop, target.frame)) {
      cell.psApplied = applyPresentation(vp, cell.ps, target, cell.psApplied);
      vp.render();
    }
    this.updateStateBadge(cell);
  }

  private drawState(cell: Cell): void {
    const vp = this.stackViewport(cell);
    if (!vp || !cell.ps) {
      if (cell.svg.firstChild) cell.svg.replaceChildren();
      return;
    }
    drawPresentation(cell.svg, vp, cell.ps, this.targetOf(cell));
  }

  /** Show a presentation state: its (first) series in the active viewport, the state applied. */
  async showPresentation(ps: PresentationState): Promise<void> {
    const cell = this.cells[this.active];
    const candidates = this.allSets().filter((s) => !s.keyObject && !isDerived(s));
    const set = ps.series.map((r) => candidates.find((s) => s.seriesUid === r.uid)).find(Boolean);
    if (!cell || !set) {
      toast('The images of this presentation state are not in the study', 'error');
      return;
    }
    if (this.mpr) this.mpr.exit();
    if (cell.set === set && this.stackViewport(cell)) this.setState(cell, ps);
    else await this.show(this.active, set, ps);
  }

  /** Apply a presentation state to what the cell shows, or none (the viewer's defaults). */
  setState(cell: Cell, ps: PresentationState | null): void {
    const vp = this.stackViewport(cell);
    if (!vp || !cell.set) return;
    cell.ps = ps;
    cell.psApplied = null;
    if (!ps) {
      clearPresentation(vp);
      vp.render();
    } else {
      const here = this.targetOf(cell);
      const first = firstImage(ps, cell.set.imageIds);
      if (here && !references(ps, here.sop, here.frame) && first >= 0) {
        void vp.setImageIdIndex(first).then(() => this.applyState(cell));
      } else {
        this.applyState(cell);
      }
    }
    this.updateStateBadge(cell);
    this.drawState(cell);
    this.drawPanel();
    this.updateOverlay(cell);
  }

  /** The cell's "PS: label" menu: the states of its series, or none (hidden when there are none). */
  private updateStateBadge(cell: Cell): void {
    const set = cell.set;
    const options = set && !set.keyObject && this.stackViewport(cell)
      ? this.states.filter((ps) => referencesSeries(ps, set.seriesUid)) : [];
    cell.psEl.hidden = !options.length;
    const signature = `${options.map((o) => o.sop).join()}|${cell.ps?.sop ?? ''}`;
    if (cell.psEl.dataset.signature !== signature) {
      cell.psEl.dataset.signature = signature;
      const select = h('select', {
        'aria-label': 'Presentation state',
        onchange: () => this.setState(cell, this.states.find((ps) => ps.sop === select.value) ?? null),
      },
      h('option', { value: '' }, cell.ps ? 'PS off (defaults)' : 'PS: off'),
      options.map((ps) => h('option', { value: ps.sop }, `PS: ${ps.label}`))) as HTMLSelectElement;
      select.value = cell.ps?.sop ?? '';
      mount(cell.psEl, select);
    }
    const target = cell.ps ? this.targetOf(cell) : null;
    const here = !cell.ps || !target || references(cell.ps, target.sop, target.frame);
    cell.psEl.classList.toggle('on', !!cell.ps);
    cell.psEl.classList.toggle('elsewhere', !here);
    const ps = cell.ps;
    cell.psEl.title = !ps ? 'Presentation states of this series: choose one to see the images as they were presented'
      : [
        `${ps.label}${ps.description ? ` — ${ps.description}` : ''}`,
        [personName(ps.creator), dicomDate(ps.date)].filter(Boolean).join(' · '),
        here ? '' : 'The state does not apply to this image.',
        ps.notes.length ? `Not applied: ${ps.notes.join('; ')}.` : '',
      ].filter(Boolean).join('\n');
  }

  /** The presentation state of a cell and what the viewport shows (for automation). */
  presentation(cellIndex: number): Record<string, unknown> | null {
    const cell = this.cells[cellIndex];
    const vp = this.stackViewport(cell);
    if (!vp) return null;
    const props = vp.getProperties();
    const cam = vp.getCamera();
    return {
      label: cell.ps?.label ?? null,
      sop: cell.ps?.sop ?? null,
      voiRange: props.voiRange ?? null,
      VOILUTFunction: props.VOILUTFunction ?? null,
      invert: !!props.invert,
      rotation: vp.getViewPresentation().rotation ?? 0,
      flipHorizontal: !!cam.flipHorizontal,
      flipVertical: !!cam.flipVertical,
      parallelScale: cam.parallelScale,
      graphics: cell.svg.childElementCount,
    };
  }

  /** Instance numbers of the stack in a cell, in order (for automation). */
  stackInstances(cellIndex: number): (number | null)[] {
    const set = this.cells[cellIndex]?.set;
    return set ? instanceNumbers(set) : [];
  }

  // ---- hanging: current and prior side by side ----

  private hang(params: URLSearchParams): void {
    const wanted = params.get('series');
    const images = this.sets.filter((s) => s.kind !== 'sr' && s.kind !== 'pdf' && !isDerived(s));
    const first = this.sets.find((s) => s.seriesUid === wanted) ?? images[0] ?? this.sets[0];
    const priorSets = this.priors[0] ? this.priorSets.get(this.priors[0].uid) ?? [] : [];
    const match = first && priorSets.length ? matchingSeries(first, priorSets) : null;
    if (first && match && !wanted) {
      this.sync = true;
      this.setLayout('1x2', [first, match]);
    } else {
      this.setLayout('1x1', [first ?? null]);
      if (!first) this.cells[0].el.appendChild(h('div.empty', 'This study has no series.'));
    }
    this.toolbar.syncSync();
  }

  // ---- synchronised scroll and W/L (current and prior, or any shown stacks) ----

  applySync(): void {
    this.voiSync?.destroy();
    this.voiSync = null;
    if (!this.sync || this.mpr) return;
    const stacks = this.cells.filter((c) => this.stackViewport(c));
    if (stacks.length < 2) return;
    this.voiSync = tools.synchronizers.createVOISynchronizer(`hilum-voi-${++syncCounter}`, { syncInvertState: false, syncColormap: false });
    for (const c of stacks) this.voiSync.add({ renderingEngineId: ENGINE_ID, viewportId: c.viewportId });
    for (const c of stacks) this.lastIndex.set(c, this.stackViewport(c)!.getCurrentImageIdIndex());
  }

  /** Relative synchronized scrolling: the other stacks move by the same distance in mm
   * (current and prior rarely share a frame of reference; the reader aligns them once by
   * scrolling one with sync off, then they move together). */
  private followScroll(source: Cell): void {
    const vp = this.stackViewport(source);
    const set = source.set;
    if (!vp || !set) return;
    const index = vp.getCurrentImageIdIndex();
    const previous = this.lastIndex.get(source);
    this.lastIndex.set(source, index);
    if (this.expected.get(source) === index) {
      this.expected.delete(source);
      return; // moved by us
    }
    if (!this.sync || this.mpr || previous === undefined || previous === index) return;
    const delta = (set.positions[index] ?? index) - (set.positions[previous] ?? previous);
    for (const target of this.cells) {
      const tvp = target === source ? null : this.stackViewport(target);
      if (!tvp || !target.set || target.set.positions.length < 2) continue;
      const tIndex = tvp.getCurrentImageIdIndex();
      const goal = (target.set.positions[tIndex] ?? tIndex) + delta;
      let best = tIndex;
      target.set.positions.forEach((p, i) => {
        if (Math.abs(p - goal) < Math.abs(target.set!.positions[best] - goal)) best = i;
      });
      if (best !== tIndex) {
        this.expected.set(target, best);
        void tvp.setImageIdIndex(best);
      }
    }
  }

  // ---- cine ----

  toggleCine(cell: Cell | undefined = this.cells[this.active]): void {
    if (!cell || !this.stackViewport(cell)) return;
    if (cell.cine) this.stopCine(cell);
    else {
      const fps = this.toolbar.fps(cell.set ? frameRate(cell.set) : undefined);
      tools.utilities.cine.playClip(cell.vpEl, { framesPerSecond: fps, loop: true });
      cell.cine = true;
    }
    this.toolbar.syncCell(cell);
    this.updateOverlay(cell);
  }

  stopCine(cell: Cell): void {
    try { tools.utilities.cine.stopClip(cell.vpEl); } catch { /* not playing */ }
    cell.cine = false;
  }

  setCineRate(fps: number): void {
    const cell = this.cells[this.active];
    if (cell?.cine) {
      this.stopCine(cell);
      tools.utilities.cine.playClip(cell.vpEl, { framesPerSecond: fps, loop: true });
      cell.cine = true;
    }
  }

  // ---- view operations on the active viewport ----

  scroll(delta: number): void {
    const vp = this.stackViewport();
    if (vp) {
      vp.scroll(delta, false, false);
      return;
    }
    this.mpr?.scroll(delta);
  }

  jump(where: 'first' | 'last'): void {
    const vp = this.stackViewport();
    if (vp) void vp.setImageIdIndex(where === 'first' ? 0 : vp.getImageIds().length - 1);
  }

  setWindow(width: number | null, center: number | null): void {
    const vps = this.mpr ? this.mpr.viewports() : [this.stackViewport()].filter(Boolean) as core.StackViewport[];
    for (const vp of vps) {
      if (width === null || center === null) {
        vp.resetProperties();
      } else {
        vp.setProperties({ voiRange: core.utilities.windowLevel.toLowHighRange(width, center) });
      }
      vp.render();
    }
    if (!this.mpr) this.updateOverlay(this.cells[this.active]);
  }

  rotate(degrees: number): void {
    const vp = this.stackViewport();
    if (!vp) return;
    const current = vp.getViewPresentation().rotation ?? 0;
    vp.setViewPresentation({ rotation: (((current + degrees) % 360) + 360) % 360 });
    vp.render();
  }

  flip(direction: 'h' | 'v'): void {
    const vp = this.stackViewport();
    if (!vp) return;
    const cam = vp.getCamera();
    if (direction === 'h') vp.setCamera({ flipHorizontal: !cam.flipHorizontal });
    else vp.setCamera({ flipVertical: !cam.flipVertical });
    vp.render();
  }

  invert(): void {
    const vp = this.stackViewport();
    if (!vp) return;
    vp.setProperties({ invert: !vp.getProperties().invert });
    vp.render();
  }

  reset(): void {
    const vp = this.stackViewport();
    if (!vp) return;
    vp.resetCamera();
    vp.resetProperties();
    vp.setViewPresentation({ rotation: 0 });
    vp.render();
    const cell = this.cells[this.active];
    if (cell.ps) {
      // Back to the view of the presentation state.
      cell.psApplied = null;
      this.applyState(cell);
    }
    this.updateOverlay(cell);
  }

  /** Page coordinates of an image pixel position (x = column, y = row) in a cell: for
   * automation (end-to-end tests, benchmark) and the measurement tests. */
  imageToPage(cellIndex: number, x: number, y: number): [number, number] | null {
    const cell = this.cells[cellIndex];
    const vp = this.stackViewport(cell);
    if (!vp) return null;
    const world = core.utilities.imageToWorldCoords(vp.getCurrentImageId(), [x, y]);
    if (!world) return null;
    const [cx, cy] = vp.worldToCanvas(world);
    const rect = cell.vpEl.getBoundingClientRect();
    return [rect.left + cx, rect.top + cy];
  }

  currentIndex(cellIndex = this.active): number {
    return this.stackViewport(this.cells[cellIndex])?.getCurrentImageIdIndex() ?? -1;
  }

  showTags(): void {
    const cell = this.cells[this.active];
    const vp = this.stackViewport(cell);
    const set = cell?.set;
    if (!set) return showTags(undefined, '');
    const instance = vp ? this.instanceAt(set, vp.getCurrentImageIdIndex()) : set.instances?.[0];
    showTags(instance, `Series ${set.number ?? ''} ${set.description} · ${set.modality}`);
  }

  async toggleMpr(): Promise<void> {
    if (this.mpr) {
      this.mpr.exit();
      return;
    }
    const set = this.cells[this.active]?.set;
    if (!set || set.kind !== 'image') return toast('Choose a CT or MR series first', 'error');
    await loadSeries(set);
    if (!set.reconstructable) return toast('MPR needs a CT/MR/PET volume: one series of parallel slices', 'error');
    this.mpr = new Mpr(this, set);
    await this.mpr.enter();
  }

  endMpr(): void {
    this.mpr = null;
    this.toolbar.syncLayout(this.layout);
  }

  // ---- events ----

  private installEvents(): void {
    const E = core.Enums.Events;
    const onImage = (evt: Event) => {
      const el = (evt as CustomEvent).detail?.element as HTMLElement | undefined;
      const cell = this.cells.find((c) => c.vpEl === el);
      if (cell) this.updateOverlay(cell);
    };
    for (const name of [E.STACK_NEW_IMAGE, E.VOI_MODIFIED, E.CAMERA_MODIFIED]) {
      core.eventTarget.addEventListener(name, onImage);
      this.disposers.push(() => core.eventTarget.removeEventListener(name, onImage));
    }
    // Element-level events bubble through the grid.
    const onElementEvent = (evt: Event) => onImage(evt);
    for (const name of [E.STACK_NEW_IMAGE, E.VOI_MODIFIED, E.CAMERA_MODIFIED]) {
      this.grid.addEventListener(name, onElementEvent);
    }
    const onKey = (e: KeyboardEvent) => this.toolbar.onKey(e);
    window.addEventListener('keydown', onKey);
    this.disposers.push(() => window.removeEventListener('keydown', onKey));
  }

  destroy(): void {
    this.destroyed = true;
    this.disposers.forEach((d) => d());
    this.resizeObserver?.disconnect();
    this.voiSync?.destroy();
    this.mpr?.destroy();
    this.teardownCells();
    this.measurements?.dispose();
    try { tools.ToolGroupManager.destroyToolGroup(STACK_GROUP); } catch { /* gone */ }
    try { this.engine?.destroy(); } catch { /* gone */ }
    core.cache.purgeCache();
    document.title = 'Hilum';
  }
}

/** The prior series that best matches a current one: same modality, similar description. */
export function matchingSeries(current: DisplaySet, candidates: DisplaySet[]): DisplaySet | null {
  const same = candidates.filter((c) => c.modality === current.modality && c.kind !== 'sr' && c.kind !== 'pdf');
  if (!same.length) return null;
  const words = (s: string) => new Set(s.toLowerCase().split(/[^a-z0-9]+/).filter(Boolean));
  const mine = words(current.description);
  const score = (c: DisplaySet) => [...words(c.description)].filter((w) => mine.has(w)).length;
  return [...same].sort((a, b) => score(b) - score(a))[0];
}

export async function renderViewer(root: HTMLElement, studyUid: string, params: URLSearchParams): Promise<() => void> {
  const viewer = new Viewer(root);
  (window as unknown as { hilumViewer?: Viewer }).hilumViewer = viewer;
  try {
    await viewer.open(studyUid, params);
  } catch (error) {
    viewer.destroy();
    mount(root, header(), h('div.center-message.error', h('h1', 'The study could not be opened'), h('p', describeError(error)),
      session.share ? null : h('p', h('a', { href: '/studies', onclick: link }, 'Back to the study list'))));
  }
  const onUnload = (e: BeforeUnloadEvent) => {
    if (viewer.measurements?.dirty) e.preventDefault();
  };
  window.addEventListener('beforeunload', onUnload);
  return () => {
    window.removeEventListener('beforeunload', onUnload);
    viewer.destroy();
  };
}

export { navigate };
