// MPR: axial, sagittal and coronal reconstructions of one volume, with crosshairs.
import { describeError } from '../api';
import { h, mount, toast } from '../dom';
import { core, TOOL, tools } from './cs';
import type { DisplaySet } from './study';
import type { Viewer } from './viewer';

const MPR_GROUP = 'hilum-mpr';
const ENGINE_ID = 'hilum-engine';
const { MouseBindings } = tools.Enums;

export class Mpr {
  group!: tools.Types.IToolGroup;
  private ids: string[] = [];
  private volumeId: string;
  private cells: HTMLElement[] = [];

  constructor(private viewer: Viewer, private set: DisplaySet) {
    this.volumeId = `cornerstoneStreamingImageVolume:hilum-${set.seriesUid}`;
  }

  async enter(): Promise<void> {
    const v = this.viewer;
    // Leave the stack viewports; the grid shows the three planes.
    for (const cell of v.cells) {
      try { v.group.removeViewports(ENGINE_ID, cell.viewportId); } catch { /* gone */ }
      if (cell.enabled) { try { v.engine.disableElement(cell.viewportId); } catch { /* gone */ } }
      cell.enabled = false;
    }
    v.applySync();
    const planes: [string, core.Enums.OrientationAxis][] = [
      ['Axial', core.Enums.OrientationAxis.AXIAL],
      ['Sagittal', core.Enums.OrientationAxis.SAGITTAL],
      ['Coronal', core.Enums.OrientationAxis.CORONAL],
    ];
    const narrow = v.grid.clientWidth < v.grid.clientHeight;
    v.grid.style.gridTemplateRows = narrow ? 'repeat(3, minmax(0, 1fr))' : 'minmax(0, 1fr)';
    v.grid.style.gridTemplateColumns = narrow ? 'minmax(0, 1fr)' : 'repeat(3, minmax(0, 1fr))';
    const stamp = Date.now() % 100000;
    const inputs = planes.map(([label, orientation], i) => {
      const element = h('div.vp', { oncontextmenu: (e: Event) => e.preventDefault() }) as HTMLDivElement;
      const cell = h('div.cell', { 'data-plane': label.toLowerCase() }, element,
        h('div.overlay.tl', h('b', label)), h('div.overlay.tr', `${this.set.description} (MPR)`));
      this.cells.push(cell);
      const viewportId = `mpr-${i}-${stamp}`;
      this.ids.push(viewportId);
      return { viewportId, type: core.Enums.ViewportType.ORTHOGRAPHIC, element, defaultOptions: { orientation, background: [0, 0, 0] as core.Types.Point3 } };
    });
    mount(v.grid, this.cells);
    const loading = h('div.empty', { style: { zIndex: '8' } }, h('div', h('div.spinner'), 'Building the volume…'));
    this.cells[0].appendChild(loading);
    try {
      v.engine.setViewports(inputs);
      const volume = await core.volumeLoader.createAndCacheVolume(this.volumeId, { imageIds: this.set.imageIds });
      tools.ToolGroupManager.destroyToolGroup(MPR_GROUP);
      this.group = tools.ToolGroupManager.createToolGroup(MPR_GROUP)!;
      this.group.addTool(TOOL.crosshairs);
      this.group.addTool(TOOL.wl);
      this.group.addTool(TOOL.pan);
      this.group.addTool(TOOL.zoom);
      this.group.addTool(TOOL.scroll);
      for (const id of this.ids) this.group.addViewport(id, ENGINE_ID);
      this.group.setToolActive(TOOL.crosshairs, { bindings: [{ mouseButton: MouseBindings.Primary }] });
      this.group.setToolActive(TOOL.wl, { bindings: [{ mouseButton: MouseBindings.Primary, modifierKey: tools.Enums.KeyboardBindings.Shift }] });
      this.group.setToolActive(TOOL.zoom, { bindings: [{ mouseButton: MouseBindings.Secondary }, { numTouchPoints: 2 }] });
      this.group.setToolActive(TOOL.pan, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
      this.group.setToolActive(TOOL.scroll, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
      (volume as unknown as { load: () => void }).load();
      await core.setVolumesForViewports(v.engine, [{ volumeId: this.volumeId }], this.ids);
      v.engine.renderViewports(this.ids);
      v.toolbar.syncLayout(v.layout);
      (window as unknown as { hilumMpr?: Mpr }).hilumMpr = this;
      toast('MPR: drag the crosshairs; Shift+drag for W/L; wheel scrolls; M or ⊞ MPR to leave');
    } catch (error) {
      toast(`MPR failed: ${describeError(error)}`, 'error');
      this.exit();
    } finally {
      loading.remove();
    }
  }

  viewports(): core.VolumeViewport[] {
    return this.ids.map((id) => this.viewer.engine.getViewport(id)).filter(Boolean) as core.VolumeViewport[];
  }

  scroll(delta: number): void {
    const vp = this.viewports()[0];
    if (vp) core.utilities.scroll(vp as unknown as core.Types.IStackViewport as never, { delta });
  }

  destroy(): void {
    try { tools.ToolGroupManager.destroyToolGroup(MPR_GROUP); } catch { /* gone */ }
    for (const id of this.ids) {
      try { this.viewer.engine.disableElement(id); } catch { /* gone */ }
    }
    this.ids = [];
    try { core.cache.removeVolumeLoadObject(this.volumeId); } catch { /* gone */ }
  }

  exit(): void {
    this.destroy();
    const v = this.viewer;
    v.endMpr();
    v.setLayout(v.layout);
  }
}
