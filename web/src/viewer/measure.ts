// Measurements and annotations: saved to the archive as DICOM SR (TID 1500), built by the
// server from this JSON (POST /api/v1/studies/{study}/annotations), and restored from it.
import { API, describeError, getJSON, postJSON, session } from '../api';
import { h, modal, mount, toast } from '../dom';
import { core, MEASUREMENT_TOOLS, TOOL, tools, type ToolKey } from './cs';
import { loadSeries } from './study';
import type { Viewer } from './viewer';

export type Kind = 'length' | 'angle' | 'ellipse' | 'rectangle' | 'probe' | 'arrow' | 'text';

export interface MeasuredValue { name: string; value: number; unit: string }

export interface Measurement {
  kind: Kind;
  series_instance_uid: string;
  sop_instance_uid: string;
  frame: number | null;
  points: [number, number][]; // DICOM SCOORD image coordinates: (0,0) is the top left corner of the first pixel
  label: string | null;
  values: MeasuredValue[];
}

export interface SavedAnnotations {
  study_instance_uid: string;
  measurements: Measurement[];
  saved_by: string | null;
  saved_at: string | null;
  sop_instance_uid: string | null;
}

const KIND_OF_TOOL = new Map<string, Kind>(
  (MEASUREMENT_TOOLS as ToolKey[]).map((k) => [TOOL[k], k as Kind]),
);

type Point3 = [number, number, number];
interface CsAnnotation {
  annotationUID?: string;
  metadata: { toolName: string; referencedImageId?: string; FrameOfReferenceUID?: string; viewPlaneNormal?: Point3; viewUp?: Point3 };
  data: {
    handles: { points: Point3[]; activeHandleIndex?: number | null; textBox?: unknown };
    label?: string;
    text?: string;
    cachedStats?: Record<string, Record<string, unknown>>;
    savedValues?: MeasuredValue[]; // as restored, until Cornerstone has computed its own
  };
  highlighted?: boolean;
  isLocked?: boolean;
  isVisible?: boolean;
  invalidated?: boolean;
  isSelected?: boolean;
}

/** UCUM units for what Cornerstone reports. */
function ucum(unit: unknown): string {
  const u = String(unit ?? '');
  if (u === 'mm' || u === 'mm²' || u === 'mm2') return u === 'mm' ? 'mm' : 'mm2';
  if (u === 'HU') return "[hnsf'U]";
  if (u === 'px' || u === 'px²') return u === 'px' ? '{pixels}' : '{pixels2}';
  if (u === 'deg' || u === '°') return 'deg';
  return '1';
}

function frameOf(imageId: string): { series: string; sop: string; frame: number } | null {
  const m = /series\/([^/]+)\/instances\/([^/]+)\/frames\/(\d+)/.exec(imageId);
  return m ? { series: m[1], sop: m[2], frame: Number(m[3]) } : null;
}

/** The statistics Cornerstone computed (one entry per target; some may still be empty). */
function statsOf(a: CsAnnotation): Record<string, unknown> {
  const merged: Record<string, unknown> = {};
  for (const entry of Object.values(a.data.cachedStats ?? {})) {
    for (const [key, value] of Object.entries(entry ?? {})) {
      if (value !== null && value !== undefined) merged[key] = value;
    }
  }
  return merged;
}

function valuesOf(kind: Kind, a: CsAnnotation): MeasuredValue[] {
  const s = statsOf(a);
  const out: MeasuredValue[] = [];
  const add = (name: string, value: unknown, unit: unknown) => {
    const n = Number(value);
    if (value !== undefined && value !== null && Number.isFinite(n)) out.push({ name, value: n, unit: ucum(unit) });
  };
  switch (kind) {
    case 'length': add('Length', s.length, s.unit ?? 'mm'); break;
    case 'angle': add('Angle', s.angle, 'deg'); break;
    case 'ellipse': case 'rectangle':
      add('Area', s.area, s.areaUnit ?? 'mm²');
      add('Mean', s.mean, s.modalityUnit);
      add('Standard deviation', s.stdDev, s.modalityUnit);
      add('Minimum', s.min, s.modalityUnit);
      add('Maximum', s.max, s.modalityUnit);
      break;
    case 'probe': add('Mean', Array.isArray(s.value) ? s.value[0] : s.value, s.modalityUnit); break;
    default: break;
  }
  return out;
}

/** Cornerstone's handle order → the SCOORD graphic data order, and back. */
function toScoordOrder(kind: Kind, p: [number, number][]): [number, number][] {
  if (kind === 'rectangle' && p.length === 4) {
    const xs = p.map((q) => q[0]);
    const ys = p.map((q) => q[1]);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]];
  }
  if (kind === 'ellipse' && p.length === 4) {
    const d = (a: [number, number], b: [number, number]) => Math.hypot(a[0] - b[0], a[1] - b[1]);
    return d(p[0], p[1]) >= d(p[2], p[3]) ? p : [p[2], p[3], p[0], p[1]];
  }
  return p;
}

function fromScoordOrder(kind: Kind, p: [number, number][]): [number, number][] {
  if (kind === 'rectangle' && p.length >= 4) {
    const xs = p.map((q) => q[0]);
    const ys = p.map((q) => q[1]);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    return [[x0, y0], [x1, y0], [x0, y1], [x1, y1]]; // top left, top right, bottom left, bottom right
  }
  if (kind === 'ellipse' && p.length === 4) {
    // Cornerstone: [bottom, top, left, right].
    const pairs: [[number, number], [number, number]][] = [[p[0], p[1]], [p[2], p[3]]];
    const vertical = Math.abs(pairs[0][0][1] - pairs[0][1][1]) >= Math.abs(pairs[1][0][1] - pairs[1][1][1]) ? 0 : 1;
    const [va, vb] = pairs[vertical];
    const [ha, hb] = pairs[1 - vertical];
    const [bottom, top] = va[1] >= vb[1] ? [va, vb] : [vb, va];
    const [left, right] = ha[0] <= hb[0] ? [ha, hb] : [hb, ha];
    return [bottom, top, left, right];
  }
  return p;
}

export class Measurements {
  dirty = false;
  saved: SavedAnnotations | null = null;
  private listeners: [string, EventListener][] = [];

  constructor(private viewer: Viewer) {
    const E = tools.Enums.Events;
    const changed: EventListener = (evt) => {
      const toolName = (evt as CustomEvent).detail?.annotation?.metadata?.toolName;
      if (!toolName || KIND_OF_TOOL.has(toolName)) this.markDirty(true);
    };
    for (const name of [E.ANNOTATION_COMPLETED, E.ANNOTATION_MODIFIED, E.ANNOTATION_REMOVED]) {
      core.eventTarget.addEventListener(name, changed);
      this.listeners.push([name, changed]);
    }
  }

  dispose(): void {
    for (const [name, fn] of this.listeners) core.eventTarget.removeEventListener(name, fn);
    tools.annotation.state.removeAllAnnotations();
  }

  private restoring = false;

  markDirty(value: boolean): void {
    if (this.restoring) return;
    this.dirty = value;
    this.viewer.toolbar.saveButton.classList.toggle('dirty', value);
    this.viewer.toolbar.saveButton.textContent = value ? 'Save*' : 'Save';
  }

  /** The measurement tools' annotations on images of the current study. */
  collect(): Measurement[] {
    const out: Measurement[] = [];
    const studyImage = new Set(this.viewer.sets.flatMap((s) => s.imageIds));
    for (const a of tools.annotation.state.getAllAnnotations() as unknown as CsAnnotation[]) {
      const kind = KIND_OF_TOOL.get(a.metadata.toolName);
      const imageId = a.metadata.referencedImageId;
      if (!kind || !imageId || !studyImage.has(imageId)) continue;
      const ref = frameOf(imageId);
      if (!ref) continue;
      const points = a.data.handles.points.map((w) => {
        const [x, y] = core.utilities.worldToImageCoords(imageId, w as core.Types.Point3) ?? [NaN, NaN];
        // Cornerstone's image coordinates are DICOM's SCOORD ones: (0,0) is the top left
        // corner of the top left pixel (PS3.3 C.18.6.1.1), no half-pixel shift either way.
        return [round(x), round(y)] as [number, number];
      });
      if (points.some(([x, y]) => !Number.isFinite(x) || !Number.isFinite(y))) continue;
      const label = a.data.label || a.data.text || '';
      out.push({
        kind,
        series_instance_uid: ref.series,
        sop_instance_uid: ref.sop,
        frame: this.isMultiframe(ref.series) ? ref.frame : null,
        points: toScoordOrder(kind, points),
        label: label || null,
        values: valuesOf(kind, a).length ? valuesOf(kind, a) : a.data.savedValues ?? [],
      });
    }
    return out;
  }

  private isMultiframe(series: string): boolean {
    return !!this.viewer.sets.find((s) => s.seriesUid === series)?.multiframe;
  }

  async save(): Promise<void> {
    if (!session.can('study.write')) {
      toast('Your role cannot save measurements (study.write)', 'error');
      return;
    }
    const measurements = this.collect();
    if (!measurements.length && !this.saved?.measurements.length) {
      toast('There are no measurements to save');
      return;
    }
    const button = this.viewer.toolbar.saveButton;
    button.disabled = true;
    try {
      this.saved = await postJSON<SavedAnnotations>(`${API}/studies/${this.viewer.study.uid}/annotations`, { measurements });
      this.markDirty(false);
      toast(`Saved ${measurements.length} measurement${measurements.length === 1 ? '' : 's'} to the archive (DICOM SR)`);
    } catch (error) {
      toast(`Saving failed: ${describeError(error)}`, 'error', 8000);
    } finally {
      button.disabled = false;
    }
  }

  /** Load the saved measurements of the study and draw them. */
  async restore(): Promise<void> {
    let saved: SavedAnnotations;
    try {
      saved = await getJSON<SavedAnnotations>(`${API}/studies/${this.viewer.study.uid}/annotations`, { quiet401: true });
    } catch (error) {
      // Share links and older servers may not offer this: the viewer works without it.
      console.info('no saved measurements:', describeError(error));
      return;
    }
    this.saved = saved;
    if (!saved.measurements.length) return;
    this.restoring = true;
    try {
      for (const m of saved.measurements) await this.draw(m);
    } finally {
      this.restoring = false;
    }
    this.refresh();
    const who = saved.saved_by ? ` by ${saved.saved_by}` : '';
    toast(`${saved.measurements.length} saved measurement${saved.measurements.length === 1 ? '' : 's'}${who}`);
  }

  private async draw(m: Measurement): Promise<void> {
    const set = this.viewer.sets.find((s) => s.seriesUid === m.series_instance_uid);
    const toolName = TOOL[m.kind as ToolKey];
    if (!set || !toolName) return;
    await loadSeries(set);
    const frame = m.frame ?? 1;
    const imageId = set.imageIds.find((id) => {
      const ref = frameOf(id);
      return ref?.sop === m.sop_instance_uid && ref.frame === frame;
    });
    if (!imageId) return;
    const plane = core.metaData.get('imagePlaneModule', imageId) as {
      rowCosines?: number[]; columnCosines?: number[]; frameOfReferenceUID?: string;
    } | undefined;
    const row = plane?.rowCosines ?? [1, 0, 0];
    const col = plane?.columnCosines ?? [0, 1, 0];
    const normal: Point3 = [row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2], row[0] * col[1] - row[1] * col[0]];
    const points = fromScoordOrder(m.kind, m.points).map(([x, y]) =>
      core.utilities.imageToWorldCoords(imageId, [x, y]) as Point3);
    const annotation: CsAnnotation = {
      invalidated: true,
      highlighted: false,
      isLocked: false,
      isVisible: true,
      metadata: {
        toolName,
        referencedImageId: imageId,
        FrameOfReferenceUID: plane?.frameOfReferenceUID,
        viewPlaneNormal: normal,
        viewUp: [-col[0], -col[1], -col[2]],
      },
      data: {
        handles: { points, activeHandleIndex: null, textBox: { hasMoved: false, worldPosition: [0, 0, 0], worldBoundingBox: { topLeft: [0, 0, 0], topRight: [0, 0, 0], bottomLeft: [0, 0, 0], bottomRight: [0, 0, 0] } } },
        label: m.label ?? '',
        cachedStats: {},
        savedValues: m.values,
      },
    };
    tools.annotation.state.addAnnotation(annotation as never, plane?.frameOfReferenceUID as string);
  }

  refresh(): void {
    try {
      tools.utilities.triggerAnnotationRenderForViewportIds(this.viewer.cells.filter((c) => c.enabled).map((c) => c.viewportId));
    } catch { /* no viewport */ }
  }

  deleteSelected(): void {
    const selected = tools.annotation.selection.getAnnotationsSelected() as unknown as CsAnnotation[];
    for (const a of selected ?? []) if (a.annotationUID) tools.annotation.state.removeAnnotation(a.annotationUID);
    this.refresh();
    if (selected?.length) this.markDirty(true);
  }

  showList(): void {
    const items = this.collect();
    const body = h('div.measure-list');
    const fmt = (v: MeasuredValue) => `${v.name} ${v.value.toFixed(v.unit === 'deg' ? 1 : 2)} ${v.unit === "[hnsf'U]" ? 'HU' : v.unit === '1' ? '' : v.unit}`;
    mount(body,
      this.saved?.saved_at ? h('p.muted', `Last saved ${new Date(this.saved.saved_at).toLocaleString()}${this.saved.saved_by ? ` by ${this.saved.saved_by}` : ''}.`) : h('p.muted', 'Not saved yet.'),
      items.length ? h('table', h('tbody', items.map((m, i) => h('tr',
        h('td', String(i + 1)), h('td', m.kind), h('td', m.label ?? ''), h('td', m.values.map(fmt).join(' · ')))))) : h('p', 'No measurements on this study.'),
      this.dirty ? h('p.error', 'There are unsaved changes.') : null,
    );
    modal('Measurements', body);
  }
}

function round(v: number): number {
  return Math.round(v * 1000) / 1000;
}
