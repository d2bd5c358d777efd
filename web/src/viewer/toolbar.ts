// The toolbar, the tool bindings (mouse, wheel, touch) and the keyboard shortcuts.
import { session } from '../api';
import { h, modal, promptDialog } from '../dom';
import { core, TOOL, tools, type ToolKey } from './cs';
import { LAYOUTS, type Cell, type Viewer } from './viewer';

const { MouseBindings } = tools.Enums;

export const PRESETS: { key: string; label: string; width: number | null; center: number | null; shortcut: string }[] = [
  { key: 'default', label: 'Default / auto', width: null, center: null, shortcut: '0' },
  { key: 'brain', label: 'CT brain 80/40', width: 80, center: 40, shortcut: '1' },
  { key: 'lung', label: 'CT lung 1500/−600', width: 1500, center: -600, shortcut: '2' },
  { key: 'bone', label: 'CT bone 2000/300', width: 2000, center: 300, shortcut: '3' },
  { key: 'abdomen', label: 'CT abdomen 400/40', width: 400, center: 40, shortcut: '4' },
  { key: 'mediastinum', label: 'CT mediastinum 350/50', width: 350, center: 50, shortcut: '5' },
];

const TOOL_BUTTONS: { key: ToolKey; label: string; title: string; shortcut: string }[] = [
  { key: 'wl', label: '◐ W/L', title: 'Window/level: drag', shortcut: 'w' },
  { key: 'pan', label: '✥ Pan', title: 'Pan: drag', shortcut: 'p' },
  { key: 'zoom', label: '⊕ Zoom', title: 'Zoom: drag', shortcut: 'z' },
  { key: 'scroll', label: '⇅ Scroll', title: 'Scroll the stack: drag', shortcut: 's' },
  { key: 'magnify', label: '⌕ Magnify', title: 'Magnifying glass: hold the button', shortcut: 'g' },
  { key: 'length', label: '↔ Length', title: 'Length measurement (mm)', shortcut: 'l' },
  { key: 'angle', label: '∠ Angle', title: 'Angle measurement', shortcut: 'a' },
  { key: 'ellipse', label: '◯ Ellipse', title: 'Elliptical ROI: area, mean, SD', shortcut: 'e' },
  { key: 'rectangle', label: '▭ Rect', title: 'Rectangle ROI: area, mean, SD', shortcut: 'b' },
  { key: 'probe', label: '⊙ Probe', title: 'Pixel value probe (HU on CT)', shortcut: 'o' },
  { key: 'arrow', label: '↗ Arrow', title: 'Arrow with text', shortcut: 'x' },
  { key: 'text', label: 'T Text', title: 'Text annotation', shortcut: 't' },
];

export const SHORTCUTS: [string, string][] = [
  ['↑ / ↓, ← / →', 'previous / next image'],
  ['Page Up / Page Down', '10 images back / forward'],
  ['Home / End', 'first / last image'],
  ['Mouse wheel, one-finger swipe (Scroll tool)', 'scroll the stack'],
  ['Left drag', 'the selected tool (W/L by default)'],
  ['Right drag / middle drag', 'zoom / pan'],
  ['Pinch, two-finger drag', 'zoom, pan (touch)'],
  ...TOOL_BUTTONS.map((t): [string, string] => [t.shortcut.toUpperCase(), t.title]),
  ['0 … 5', 'W/L presets: default, brain, lung, bone, abdomen, mediastinum'],
  ['I', 'invert'], ['H / V', 'flip horizontal / vertical'], ['R / Shift+R', 'rotate 90° right / left'],
  ['Esc', 'reset the view'], ['C', 'cine play / pause'], ['M', 'MPR on / off'], ['Y', 'synchronise scroll and W/L on / off'],
  ['Tab', 'next viewport'], ['Ctrl+I', 'DICOM tags'], ['Delete', 'delete the selected measurement'],
  ['K', 'mark / unmark the image as a key image (stored with “★ Store”)'],
  ['Ctrl+S', 'save measurements'], ['?', 'this help'],
];

export class Toolbar {
  el = h('div.toolbar', { role: 'toolbar', 'aria-label': 'Viewer tools' });
  primary: ToolKey;
  private buttons = new Map<ToolKey, HTMLButtonElement>();
  private layoutSelect: HTMLSelectElement;
  private presetSelect: HTMLSelectElement;
  private fpsInput: HTMLInputElement;
  private cineButton: HTMLButtonElement;
  private syncButton: HTMLButtonElement;
  private mprButton: HTMLButtonElement;
  saveButton: HTMLButtonElement;
  keyButton: HTMLButtonElement;
  keySaveButton: HTMLButtonElement;
  private group: tools.Types.IToolGroup | null = null;

  constructor(private viewer: Viewer) {
    const touch = matchMedia('(pointer: coarse)').matches;
    this.primary = touch ? 'scroll' : 'wl';
    for (const t of TOOL_BUTTONS) {
      const b = h('button', {
        title: `${t.title} (${t.shortcut.toUpperCase()})`, 'data-tool': t.key, 'aria-pressed': 'false',
        onclick: () => this.select(t.key),
      }, t.label) as HTMLButtonElement;
      this.buttons.set(t.key, b);
    }
    this.layoutSelect = h('select', { title: 'Layout', 'aria-label': 'Layout', onchange: () => viewer.setLayout(this.layoutSelect.value) },
      Object.keys(LAYOUTS).map((k) => h('option', { value: k }, k.replace('x', '×')))) as HTMLSelectElement;
    this.presetSelect = h('select', {
      title: 'Window presets (0–5)', 'aria-label': 'Window preset',
      onchange: () => { this.applyPreset(this.presetSelect.value); this.presetSelect.value = ''; },
    }, h('option', { value: '' }, 'W/L preset…'), PRESETS.map((p) => h('option', { value: p.key }, `${p.shortcut} ${p.label}`))) as HTMLSelectElement;
    this.fpsInput = h('input', { type: 'number', min: 1, max: 120, value: 15, title: 'Frames per second', 'aria-label': 'Frames per second',
      onchange: () => { this.fpsInput.dataset.touched = '1'; viewer.setCineRate(this.fps()); } }) as HTMLInputElement;
    this.cineButton = h('button', { title: 'Cine play/pause (C)', onclick: () => viewer.toggleCine() }, '▶ Cine') as HTMLButtonElement;
    this.syncButton = h('button', { title: 'Synchronise scroll and W/L between viewports (Y)', onclick: () => this.toggleSync() }, '⇆ Sync') as HTMLButtonElement;
    this.mprButton = h('button', { title: 'MPR: axial, sagittal, coronal with crosshairs (M)', onclick: () => void viewer.toggleMpr() }, '⊞ MPR') as HTMLButtonElement;
    this.saveButton = h('button', { title: 'Save measurements to the archive (Ctrl+S)', onclick: () => void viewer.measurements.save() }, 'Save') as HTMLButtonElement;
    this.saveButton.hidden = !session.can('study.write');
    this.keyButton = h('button', { title: 'Mark or unmark the image as a key image (K)', 'aria-pressed': 'false', onclick: () => viewer.toggleKeyImage() }, '☆ Key') as HTMLButtonElement;
    this.keySaveButton = h('button.key-save', { title: 'Store the marked key images in the archive (a Key Object Selection document)', onclick: () => void viewer.saveKeyImages() }, '★ Store') as HTMLButtonElement;
    this.keyButton.hidden = !session.can('study.write');
    this.keySaveButton.hidden = true;
    const sep = () => h('span.sep');
    this.el.append(
      ...TOOL_BUTTONS.slice(0, 5).map((t) => this.buttons.get(t.key)!), sep(),
      ...TOOL_BUTTONS.slice(5).map((t) => this.buttons.get(t.key)!), sep(),
      this.presetSelect,
      h('button', { title: 'Rotate 90° right (R)', onclick: () => viewer.rotate(90) }, '↻'),
      h('button', { title: 'Flip horizontal (H)', onclick: () => viewer.flip('h') }, '⇋'),
      h('button', { title: 'Flip vertical (V)', onclick: () => viewer.flip('v') }, '⇵'),
      h('button', { title: 'Invert (I)', onclick: () => viewer.invert() }, '◑ Invert'),
      h('button', { title: 'Reset the view (Esc)', onclick: () => viewer.reset() }, '⟲ Reset'), sep(),
      this.layoutSelect, this.syncButton, this.mprButton, sep(),
      this.cineButton, h('label', this.fpsInput, 'fps'), sep(),
      h('button', { title: 'DICOM tags (Ctrl+I)', onclick: () => viewer.showTags() }, 'Tags'),
      h('button', { title: 'Measurements of this study', onclick: () => viewer.measurements.showList() }, 'List'),
      this.saveButton, this.keyButton, this.keySaveButton,
      h('button', { title: 'Keyboard shortcuts (?)', onclick: () => showHelp() }, '?'),
    );
  }

  setupTools(group: tools.Types.IToolGroup): void {
    this.group = group;
    group.addTool(TOOL.wl);
    group.addTool(TOOL.pan);
    group.addTool(TOOL.zoom, { pinchToZoom: true, pan: true, minZoomScale: 0.05, maxZoomScale: 40 });
    group.addTool(TOOL.scroll, { loop: false });
    group.addTool(TOOL.magnify, { magnifySize: 12, magnificationLevel: 2.5 });
    group.addTool(TOOL.length);
    group.addTool(TOOL.angle);
    group.addTool(TOOL.ellipse);
    group.addTool(TOOL.rectangle);
    group.addTool(TOOL.probe);
    group.addTool(TOOL.arrow, {
      getTextCallback: (done: (text: string) => void) => { void promptDialog('Arrow text').then((t) => done(t ?? '')); },
      changeTextCallback: (data: { data: { label: string } }, _evt: unknown, done: (text: string) => void) => {
        void promptDialog('Arrow text', data.data.label).then((t) => done(t ?? data.data.label));
      },
    });
    group.addTool(TOOL.text, {
      getTextCallback: (done: (text: string) => void) => { void promptDialog('Text').then((t) => done(t ?? '')); },
      changeTextCallback: (data: { data: { label: string } }, _evt: unknown, done: (text: string) => void) => {
        void promptDialog('Text', data.data.label).then((t) => done(t ?? data.data.label));
      },
    });
    group.setToolActive(TOOL.zoom, { bindings: [{ mouseButton: MouseBindings.Secondary }, { numTouchPoints: 2 }] });
    group.setToolActive(TOOL.pan, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
    group.setToolActive(TOOL.scroll, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
    for (const key of ['length', 'angle', 'ellipse', 'rectangle', 'probe', 'arrow', 'text'] as ToolKey[]) group.setToolPassive(TOOL[key]);
    this.select(this.primary);
  }

  select(key: ToolKey): void {
    const group = this.viewer.mpr ? this.viewer.mpr.group : this.group;
    if (!group) return;
    const old = this.primary;
    if (group.hasTool(TOOL[old])) group.setToolPassive(TOOL[old]);
    group.setToolActive(TOOL[key], { bindings: [{ mouseButton: MouseBindings.Primary }] });
    this.primary = key;
    for (const [k, b] of this.buttons) {
      b.classList.toggle('active', k === key);
      b.setAttribute('aria-pressed', String(k === key));
    }
  }

  applyPreset(key: string): void {
    const preset = PRESETS.find((p) => p.key === key);
    if (preset) this.viewer.setWindow(preset.width, preset.center);
  }

  fps(fallback?: number): number {
    if (fallback !== undefined && !this.fpsInput.dataset.touched) this.fpsInput.value = String(fallback);
    const v = Number(this.fpsInput.value);
    return Number.isFinite(v) && v > 0 ? Math.min(120, v) : 15;
  }

  syncLayout(name: string): void {
    this.layoutSelect.value = name;
    this.mprButton.classList.toggle('active', !!this.viewer.mpr);
  }

  syncSync(): void {
    this.syncButton.classList.toggle('active', this.viewer.sync);
    this.syncButton.setAttribute('aria-pressed', String(this.viewer.sync));
  }

  toggleSync(): void {
    this.viewer.sync = !this.viewer.sync;
    this.viewer.applySync();
    this.syncSync();
  }

  /** The key image buttons: whether the image on screen is marked, how many wait to be saved. */
  syncKeys(marked: boolean, pending: number): void {
    this.keyButton.classList.toggle('active', marked);
    this.keyButton.setAttribute('aria-pressed', String(marked));
    this.keyButton.textContent = marked ? '★ Key' : '☆ Key';
    this.keySaveButton.hidden = !pending;
    this.keySaveButton.textContent = `★ Store ${pending} key image${pending === 1 ? '' : 's'}`;
  }

  syncCell(cell: Cell | undefined): void {
    this.cineButton.classList.toggle('active', !!cell?.cine);
    this.cineButton.textContent = cell?.cine ? '⏸ Cine' : '▶ Cine';
    if (cell?.set?.multiframe && !cell.cine) this.fps(undefined);
  }

  onKey(e: KeyboardEvent): void {
    const target = e.target as HTMLElement;
    if (target.closest('input, select, textarea, .backdrop')) return;
    const v = this.viewer;
    const key = e.key;
    const ctrl = e.ctrlKey || e.metaKey;
    if (ctrl && key.toLowerCase() === 's') { e.preventDefault(); void v.measurements.save(); return; }
    if (ctrl && key.toLowerCase() === 'i') { e.preventDefault(); v.showTags(); return; }
    if (ctrl || e.altKey) return;
    const handled = (() => {
      switch (key) {
        case 'ArrowUp': case 'ArrowLeft': v.scroll(-1); return true;
        case 'ArrowDown': case 'ArrowRight': v.scroll(1); return true;
        case 'PageUp': v.scroll(-10); return true;
        case 'PageDown': v.scroll(10); return true;
        case 'Home': v.jump('first'); return true;
        case 'End': v.jump('last'); return true;
        case 'Escape': v.reset(); return true;
        case 'Delete': case 'Backspace': v.measurements.deleteSelected(); return true;
        case 'Tab': {
          if (v.cells.length < 2) return false;
          v.setActive((v.active + (e.shiftKey ? v.cells.length - 1 : 1)) % v.cells.length);
          return true;
        }
        case '?': showHelp(); return true;
        case 'R': v.rotate(-90); return true;
        default: break;
      }
      const lower = key.toLowerCase();
      const preset = PRESETS.find((p) => p.shortcut === key);
      if (preset) { this.applyPreset(preset.key); return true; }
      const tool = TOOL_BUTTONS.find((t) => t.shortcut === lower);
      if (tool && key === lower) { this.select(tool.key); return true; }
      switch (lower) {
        case 'i': v.invert(); return true;
        case 'h': v.flip('h'); return true;
        case 'v': v.flip('v'); return true;
        case 'r': v.rotate(90); return true;
        case 'c': v.toggleCine(); return true;
        case 'm': void v.toggleMpr(); return true;
        case 'y': this.toggleSync(); return true;
        case 'k': v.toggleKeyImage(); return true;
        default: return false;
      }
    })();
    if (handled) e.preventDefault();
  }
}

export function showHelp(): void {
  modal('Keyboard shortcuts and gestures', h('div.tags-table', h('table', h('tbody',
    SHORTCUTS.map(([k, what]) => h('tr', h('td.tag', k), h('td', what)))))));
}

export { core };
