// Grayscale Softcopy Presentation States (PS3.3 A.33.1): how someone presented images
// (window, polarity, rotation, flip, displayed area, annotations, shutters), read from
// the WADO-RS metadata of a PR series and applied to a stack viewport. The graphics are
// an SVG layer over the viewport, redrawn on every render from the image's pixel
// coordinates, so they follow zoom, pan, rotation and flips.
import { num, nums, seq, str, strs, type DicomJson } from '../dicom';
import { core } from './cs';

export const GSPS_CLASS = '1.2.840.10008.5.1.4.1.1.11.1';

const T = {
  ContentLabel: '00700080',
  ContentDescription: '00700081',
  PresentationCreationDate: '00700082',
  PresentationCreationTime: '00700083',
  ContentCreatorName: '00700084',
  ReferencedSeriesSequence: '00081115',
  ReferencedImageSequence: '00081140',
  ReferencedFrameNumber: '00081160',
  ReferencedSOPInstanceUID: '00081155',
  SeriesInstanceUID: '0020000E',
  SOPInstanceUID: '00080018',
  SOPClassUID: '00080016',
  StudyInstanceUID: '0020000D',
  SoftcopyVOILUTSequence: '00283110',
  WindowCenter: '00281050',
  WindowWidth: '00281051',
  WindowCenterWidthExplanation: '00281055',
  VOILUTFunction: '00281056',
  VOILUTSequence: '00283010',
  RescaleIntercept: '00281052',
  RescaleSlope: '00281053',
  ModalityLUTSequence: '00283000',
  PresentationLUTShape: '20500020',
  PresentationLUTSequence: '20500010',
  ImageRotation: '00700042',
  ImageHorizontalFlip: '00700041',
  DisplayedAreaSelectionSequence: '0070005A',
  DisplayedAreaTopLeftHandCorner: '00700052',
  DisplayedAreaBottomRightHandCorner: '00700053',
  PresentationSizeMode: '00700100',
  PresentationPixelSpacing: '00700101',
  PresentationPixelAspectRatio: '00700102',
  PresentationPixelMagnificationRatio: '00700103',
  GraphicAnnotationSequence: '00700001',
  GraphicLayer: '00700002',
  TextObjectSequence: '00700008',
  GraphicObjectSequence: '00700009',
  BoundingBoxAnnotationUnits: '00700003',
  AnchorPointAnnotationUnits: '00700004',
  GraphicAnnotationUnits: '00700005',
  UnformattedTextValue: '00700006',
  BoundingBoxTopLeftHandCorner: '00700010',
  BoundingBoxBottomRightHandCorner: '00700011',
  BoundingBoxTextHorizontalJustification: '00700012',
  AnchorPoint: '00700014',
  AnchorPointVisibility: '00700015',
  TextStyleSequence: '00700231',
  TextColorCIELabValue: '00700241',
  GraphicData: '00700022',
  GraphicType: '00700023',
  GraphicFilled: '00700024',
  LineStyleSequence: '00700232',
  PatternOnColorCIELabValue: '00700251',
  LineThickness: '00700253',
  FillStyleSequence: '00700233',
  PatternOnOpacity: '00700284',
  GraphicLayerSequence: '00700060',
  GraphicLayerOrder: '00700062',
  GraphicLayerRecommendedDisplayGrayscaleValue: '00700066',
  GraphicLayerRecommendedDisplayCIELabValue: '00700401',
  ShutterShape: '00181600',
  ShutterLeftVerticalEdge: '00181602',
  ShutterRightVerticalEdge: '00181604',
  ShutterUpperHorizontalEdge: '00181606',
  ShutterLowerHorizontalEdge: '00181608',
  CenterOfCircularShutter: '00181610',
  RadiusOfCircularShutter: '00181612',
  VerticesOfThePolygonalShutter: '00181620',
  ShutterPresentationValue: '00181622',
  ShutterPresentationColorCIELabValue: '00181624',
  Rows: '00280010',
  Columns: '00280011',
} as const;

/** ReferencedImageSequence of an item; null: the item applies to every image of the state. */
export type Refs = DicomJson[] | null;

export interface Voi {
  refs: Refs;
  center: number | null;
  width: number | null;
  fn: 'LINEAR' | 'LINEAR_EXACT' | 'SIGMOID';
  explanation: string;
}

export interface Area {
  refs: Refs;
  tl: [number, number]; // DisplayedAreaTopLeftHandCorner: column, row (pixels from 1)
  br: [number, number];
  mode: string; // SCALE TO FIT, TRUE SIZE, MAGNIFY
  magnification: number | null;
}

export interface Annotation {
  refs: Refs;
  layer: string;
  order: number;
  color: string;
  texts: DicomJson[];
  graphics: DicomJson[];
}

export interface PresentationState {
  sop: string;
  studyUid: string;
  seriesUid: string;
  label: string;
  description: string;
  creator: string;
  date: string;
  time: string;
  series: { uid: string; images: DicomJson[] }[]; // ReferencedSeriesSequence
  voi: Voi[];
  rescale: { slope: number; intercept: number } | null;
  inverse: boolean | null; // PresentationLUTShape; null when absent or a LUT (not applied)
  rotation: number;
  flip: boolean;
  areas: Area[];
  annotations: Annotation[];
  json: DicomJson;
  notes: string[]; // what of this state the viewer does not apply
}

export const DEFAULT_COLOR = '#ffd400';

function refsOf(item: DicomJson): Refs {
  const refs = seq(item, T.ReferencedImageSequence);
  return refs.length ? refs : null;
}

function hex(v: number): string {
  return Math.round(Math.min(255, Math.max(0, v))).toString(16).padStart(2, '0');
}

/** A DICOM CIELab colour (three 16-bit values, PS3.3 C.10.7.1.1) as CSS #rrggbb; through
 * XYZ with the D65 white point and sRGB, as highdicom and pixelmed convert it. */
export function labToRgb(value: number[]): string | null {
  if (value.length !== 3 || value.some((v) => !Number.isFinite(v))) return null;
  const l = (value[0] * 100) / 0xffff;
  const a = (value[1] * 255) / 0xffff - 128;
  const b = (value[2] * 255) / 0xffff - 128;
  const fy = (l + 16) / 116;
  const f = (c: number) => (c ** 3 > 0.008856 ? c ** 3 : (c - 16 / 116) / 7.787);
  const x = 0.95047 * f(a / 500 + fy);
  const y = 1.0 * f(fy);
  const z = 1.08883 * f(fy - b / 200);
  const gamma = (c: number) => 255 * (c > 0.0031308 ? 1.055 * c ** (1 / 2.4) - 0.055 : 12.92 * c);
  return `#${hex(gamma(x * 3.2406 + y * -1.5372 + z * -0.4986))}${hex(gamma(x * -0.9689 + y * 1.8758 + z * 0.0415))}${hex(gamma(x * 0.0557 + y * -0.204 + z * 1.057))}`;
}

function grey(value: number | undefined): string | null {
  if (value === undefined) return null;
  const v = hex((value * 255) / 0xffff);
  return `#${v}${v}${v}`;
}

export function isPresentationState(json: DicomJson): boolean {
  return str(json, T.SOPClassUID) === GSPS_CLASS;
}

export function parsePresentationState(json: DicomJson): PresentationState {
  const notes: string[] = [];
  const layers = new Map(seq(json, T.GraphicLayerSequence).map((l) => [str(l, T.GraphicLayer), l]));
  const voi = seq(json, T.SoftcopyVOILUTSequence).map((item): Voi => {
    const fn = str(item, T.VOILUTFunction).toUpperCase();
    if (item[T.VOILUTSequence] && num(item, T.WindowWidth) === undefined) {
      notes.push('a VOI LUT table is not applied (the image’s own window is used)');
    }
    return {
      refs: refsOf(item),
      center: num(item, T.WindowCenter) ?? null,
      width: num(item, T.WindowWidth) ?? null,
      fn: fn === 'SIGMOID' || fn === 'LINEAR_EXACT' ? fn : 'LINEAR',
      explanation: str(item, T.WindowCenterWidthExplanation),
    };
  });
  const slope = num(json, T.RescaleSlope);
  const intercept = num(json, T.RescaleIntercept);
  if (json[T.ModalityLUTSequence]) notes.push('a Modality LUT table is not applied');
  const shape = str(json, T.PresentationLUTShape).toUpperCase();
  if (!shape && json[T.PresentationLUTSequence]) notes.push('a Presentation LUT table is not applied');
  const areas = seq(json, T.DisplayedAreaSelectionSequence).map((item): Area => {
    const tl = nums(item, T.DisplayedAreaTopLeftHandCorner);
    const br = nums(item, T.DisplayedAreaBottomRightHandCorner);
    const mode = str(item, T.PresentationSizeMode).toUpperCase() || 'SCALE TO FIT';
    const aspect = nums(item, T.PresentationPixelAspectRatio);
    if (aspect.length === 2 && aspect[0] !== aspect[1]) notes.push('a presentation pixel aspect ratio other than 1:1 is not applied');
    if (mode === 'TRUE SIZE') notes.push('TRUE SIZE is shown at a nominal 96 pixels per inch (the display is not calibrated)');
    return {
      refs: refsOf(item),
      tl: [tl[0] ?? 1, tl[1] ?? 1],
      br: [br[0] ?? 1, br[1] ?? 1],
      mode,
      magnification: num(item, T.PresentationPixelMagnificationRatio) ?? null,
    };
  });
  const annotations = seq(json, T.GraphicAnnotationSequence).map((item): Annotation => {
    const name = str(item, T.GraphicLayer);
    const layer = layers.get(name);
    return {
      refs: refsOf(item),
      layer: name,
      order: num(layer, T.GraphicLayerOrder) ?? Number.MAX_SAFE_INTEGER,
      color: labToRgb(nums(layer, T.GraphicLayerRecommendedDisplayCIELabValue))
        ?? grey(num(layer, T.GraphicLayerRecommendedDisplayGrayscaleValue)) ?? DEFAULT_COLOR,
      texts: seq(item, T.TextObjectSequence),
      graphics: seq(item, T.GraphicObjectSequence),
    };
  });
  annotations.sort((a, b) => a.order - b.order);
  if (json['60000010'] || json['60000022'] || Object.keys(json).some((k) => /^60[0-9A-E][02468A-E]3000$/.test(k))) {
    notes.push('overlay planes (60xx) are not shown');
  }
  if (json['00281401'] || json['00282000']) notes.push('ICC profiles are not applied');
  if (strs(json, T.ShutterShape).some((s) => s.toUpperCase() === 'BITMAP')) notes.push('bitmap shutters are not applied');
  return {
    sop: str(json, T.SOPInstanceUID),
    studyUid: str(json, T.StudyInstanceUID),
    seriesUid: str(json, T.SeriesInstanceUID),
    label: str(json, T.ContentLabel) || 'PRESENTATION',
    description: str(json, T.ContentDescription),
    creator: str(json, T.ContentCreatorName),
    date: str(json, T.PresentationCreationDate),
    time: str(json, T.PresentationCreationTime),
    series: seq(json, T.ReferencedSeriesSequence).map((s) => ({ uid: str(s, T.SeriesInstanceUID), images: seq(s, T.ReferencedImageSequence) })),
    voi,
    rescale: slope !== undefined && intercept !== undefined ? { slope, intercept } : null,
    inverse: shape === 'INVERSE' ? true : shape === 'IDENTITY' ? false : null,
    rotation: ((((num(json, T.ImageRotation) ?? 0) % 360) + 360) % 360),
    flip: str(json, T.ImageHorizontalFlip).toUpperCase() === 'Y',
    areas,
    annotations,
    json,
    notes: [...new Set(notes)],
  };
}

/** Does an item with these references apply to this image (frame numbers from 1)? */
export function applies(refs: Refs, sop: string, frame: number): boolean {
  if (!refs) return true;
  return refs.some((r) => {
    if (str(r, T.ReferencedSOPInstanceUID) !== sop) return false;
    const frames = nums(r, T.ReferencedFrameNumber);
    return !frames.length || frames.includes(frame);
  });
}

/** Does the state reference this image (ReferencedSeriesSequence)? */
export function references(ps: PresentationState, sop: string, frame: number): boolean {
  return ps.series.some((s) => applies(s.images, sop, frame));
}

/** Where to open a stack with the state: its first annotated image, else its first image
 * (-1 when it references none of them). */
export function firstImage(ps: PresentationState, imageIds: string[]): number {
  const refs = imageIds.map(imageRef);
  const annotated = refs.findIndex(({ sop, frame }) => references(ps, sop, frame) &&
    ps.annotations.some((a) => (a.graphics.length || a.texts.length) && applies(a.refs, sop, frame)));
  return annotated >= 0 ? annotated : refs.findIndex(({ sop, frame }) => references(ps, sop, frame));
}

export function referencesSeries(ps: PresentationState, seriesUid: string): boolean {
  return ps.series.some((s) => s.uid === seriesUid);
}

/** SOP Instance UID and frame number (from 1) of a wadors imageId. */
export function imageRef(imageId: string): { sop: string; frame: number } {
  const m = /instances\/([^/]+)\/frames\/(\d+)/.exec(imageId);
  return { sop: m?.[1] ?? '', frame: Number(m?.[2] ?? 1) };
}

export interface Target {
  imageId: string;
  sop: string;
  frame: number;
  instance: DicomJson | undefined;
}

/** What was applied to the viewport for the previous image: items change per image. */
export interface Applied {
  voi: Voi | null;
  area: Area | null;
}

/** The VOI range of the state's window for an image, in the viewport's (the image's
 * modality) units: a rescale in the state (its Modality LUT) other than the image's own is
 * taken into account by mapping the window through both. */
export function voiRange(ps: PresentationState, voi: Voi, instance: DicomJson | undefined): { lower: number; upper: number } | null {
  if (voi.center === null || voi.width === null) return null;
  let { lower, upper } = core.utilities.windowLevel.toLowHighRange(voi.width, voi.center, voi.fn as core.Enums.VOILUTFunctionType);
  if (ps.rescale && ps.rescale.slope) {
    const slope = num(instance, T.RescaleSlope) ?? 1;
    const intercept = num(instance, T.RescaleIntercept) ?? 0;
    const map = (v: number) => slope * ((v - ps.rescale!.intercept) / ps.rescale!.slope) + intercept;
    [lower, upper] = [map(lower), map(upper)].sort((p, q) => p - q);
  }
  return { lower, upper };
}

/** Continuous image coordinates (0,0 = top left corner of the first pixel) of a displayed area. */
function areaBounds(area: Area): [number, number, number, number] {
  const [c0, c1] = [area.tl[0], area.br[0]].sort((a, b) => a - b);
  const [r0, r1] = [area.tl[1], area.br[1]].sort((a, b) => a - b);
  return [c0 - 1, r0 - 1, c1, r1];
}

/** World coordinates of a point in DICOM image coordinates ((0,0) is the top left corner
 * of the first pixel, its centre is (0.5,0.5)). Cornerstone (since 2.x) uses the same
 * convention: imageToWorldCoords subtracts the half pixel from ImagePositionPatient, which
 * is the first pixel's centre (checked end to end by tests/test_webapp_gsps.py). */
function toWorld(imageId: string, x: number, y: number): core.Types.Point3 {
  return core.utilities.imageToWorldCoords(imageId, [x, y]) as core.Types.Point3;
}

function applyArea(vp: core.StackViewport, area: Area, imageId: string): void {
  const [x0, y0, x1, y1] = areaBounds(area);
  const cam = vp.getCamera();
  if (!cam.focalPoint || !cam.position) return;
  const centre = toWorld(imageId, (x0 + x1) / 2, (y0 + y1) / 2);
  const o = toWorld(imageId, 0, 0);
  const dist = (p: core.Types.Point3) => Math.hypot(p[0] - o[0], p[1] - o[1], p[2] - o[2]);
  const column = dist(toWorld(imageId, 1, 0)) || 1; // world size of a pixel along a row
  const row = dist(toWorld(imageId, 0, 1)) || 1;
  const turned = Math.round((vp.getViewPresentation().rotation ?? 0) / 90) % 2 === 1;
  const width = (x1 - x0) * column;
  const height = (y1 - y0) * row;
  const [screenW, screenH] = turned ? [height, width] : [width, height];
  const cw = vp.element.clientWidth || 1;
  const ch = vp.element.clientHeight || 1;
  let parallelScale: number;
  if (area.mode === 'MAGNIFY' && area.magnification) {
    parallelScale = ((ch / area.magnification) * (turned ? column : row)) / 2;
  } else if (area.mode === 'TRUE SIZE') {
    parallelScale = (ch * 25.4) / 96 / 2; // world units are mm
  } else {
    parallelScale = Math.max(screenH / 2, ((screenW / 2) * ch) / cw);
  }
  const offset = [0, 1, 2].map((i) => cam.position![i] - cam.focalPoint![i]);
  vp.setCamera({
    focalPoint: centre,
    position: [centre[0] + offset[0], centre[1] + offset[1], centre[2] + offset[2]],
    parallelScale,
  });
}

/**
 * Apply the state to the viewport for the image on screen. Without `previous` (the state
 * has just been chosen): everything, from the viewport's defaults. With it (another image
 * of the stack): the window and the displayed area, when the items for this image differ.
 */
export function applyPresentation(vp: core.StackViewport, ps: PresentationState, target: Target, previous: Applied | null): Applied {
  const { sop, frame } = target;
  const voi = ps.voi.find((v) => applies(v.refs, sop, frame)) ?? null;
  const area = ps.areas.find((a) => applies(a.refs, sop, frame)) ?? null;
  if (!previous) {
    vp.resetProperties();
    vp.resetCamera();
    vp.setViewPresentation({ rotation: 0 });
    if (ps.rotation) vp.setViewPresentation({ rotation: ps.rotation });
    if (ps.flip) vp.setCamera({ flipHorizontal: true });
    if (ps.inverse !== null) vp.setProperties({ invert: ps.inverse });
  }
  if (voi && (!previous || previous.voi !== voi)) {
    const range = voiRange(ps, voi, target.instance);
    if (range) vp.setProperties({ voiRange: range, VOILUTFunction: voi.fn as core.Enums.VOILUTFunctionType });
  }
  if (area && (!previous || previous.area !== area)) applyArea(vp, area, target.imageId);
  return { voi: voi ?? previous?.voi ?? null, area: area ?? previous?.area ?? null };
}

/** Back to the viewer's defaults. */
export function clearPresentation(vp: core.StackViewport): void {
  vp.resetProperties();
  vp.resetCamera();
  vp.setViewPresentation({ rotation: 0 });
}

// ---- drawing -------------------------------------------------------------------------

const SVG = 'http://www.w3.org/2000/svg';
type Pt = [number, number];

function el(name: string, attrs: Record<string, string | number>, text?: string): SVGElement {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

const fmt = (p: Pt) => `${p[0].toFixed(1)},${p[1].toFixed(1)}`;

function pairs(values: number[]): Pt[] {
  const out: Pt[] = [];
  for (let i = 0; i + 1 < values.length; i += 2) out.push([values[i], values[i + 1]]);
  return out;
}

/** Catmull-Rom through the points, as cubic Béziers (INTERPOLATED graphics). */
function smooth(p: Pt[]): string {
  if (p.length < 3) return `M${p.map(fmt).join('L')}`;
  let d = `M${fmt(p[0])}`;
  for (let i = 0; i < p.length - 1; i++) {
    const p0 = p[i - 1] ?? p[i];
    const p1 = p[i];
    const p2 = p[i + 1];
    const p3 = p[i + 2] ?? p2;
    const c1: Pt = [p1[0] + (p2[0] - p0[0]) / 6, p1[1] + (p2[1] - p0[1]) / 6];
    const c2: Pt = [p2[0] - (p3[0] - p1[0]) / 6, p2[1] - (p3[1] - p1[1]) / 6];
    d += `C${fmt(c1)} ${fmt(c2)} ${fmt(p2)}`;
  }
  return d;
}

/** Points around an ellipse (centre, two semi-axis vectors), in the units given. */
function conic(c: Pt, a: Pt, b: Pt, n = 72): Pt[] {
  return Array.from({ length: n }, (_, k) => {
    const t = (2 * Math.PI * k) / n;
    return [c[0] + a[0] * Math.cos(t) + b[0] * Math.sin(t), c[1] + a[1] * Math.cos(t) + b[1] * Math.sin(t)] as Pt;
  });
}

function styleColor(item: DicomJson, sequence: string, tag: string): string | null {
  return labToRgb(nums(seq(item, sequence)[0], tag));
}

/**
 * Draw the state's graphics and shutters for the image on screen into the SVG layer
 * (canvas coordinates = CSS pixels of the viewport element).
 */
export function drawPresentation(svg: SVGSVGElement, vp: core.StackViewport, ps: PresentationState | null, target: Target | null): void {
  svg.replaceChildren();
  if (!ps || !target) return;
  const { imageId, sop, frame, instance } = target;
  if (!references(ps, sop, frame)) return;
  const w = vp.element.clientWidth;
  const h = vp.element.clientHeight;
  // Image (DICOM pixel coordinates) to canvas is affine: three points give it.
  const at = (x: number, y: number) => vp.worldToCanvas(toWorld(imageId, x, y));
  let o: Pt, ex: Pt, ey: Pt;
  try {
    [o, ex, ey] = [at(0, 0) as Pt, at(1, 0) as Pt, at(0, 1) as Pt];
  } catch {
    return;
  }
  const pixel = (x: number, y: number): Pt => [
    o[0] + (ex[0] - o[0]) * x + (ey[0] - o[0]) * y,
    o[1] + (ex[1] - o[1]) * x + (ey[1] - o[1]) * y,
  ];
  // DISPLAY units: 0..1 across the displayed area as it is on screen.
  const area = ps.areas.find((a) => applies(a.refs, sop, frame));
  const [x0, y0, x1, y1] = area ? areaBounds(area) : [0, 0, num(instance, T.Columns) ?? 1, num(instance, T.Rows) ?? 1];
  const corners = [pixel(x0, y0), pixel(x1, y0), pixel(x0, y1), pixel(x1, y1)];
  const left = Math.min(...corners.map((p) => p[0]));
  const right = Math.max(...corners.map((p) => p[0]));
  const top = Math.min(...corners.map((p) => p[1]));
  const bottom = Math.max(...corners.map((p) => p[1]));
  const display = (u: number, v: number): Pt => [left + u * (right - left), top + v * (bottom - top)];
  const mapper = (units: string) => (units.toUpperCase() === 'DISPLAY' ? display : pixel);

  drawShutters(svg, ps.json, pixel, w, h);

  for (const ann of ps.annotations) {
    if (!applies(ann.refs, sop, frame)) continue;
    const g = el('g', { 'data-layer': ann.layer, class: 'ps-layer' });
    for (const item of ann.graphics) {
      const map = mapper(str(item, T.GraphicAnnotationUnits));
      const type = str(item, T.GraphicType).toUpperCase();
      const pts = pairs(nums(item, T.GraphicData));
      if (!pts.length) continue;
      const color = styleColor(item, T.LineStyleSequence, T.PatternOnColorCIELabValue) ?? ann.color;
      const width = num(seq(item, T.LineStyleSequence)[0], T.LineThickness) ?? 2;
      const filled = str(item, T.GraphicFilled).toUpperCase() === 'Y';
      const fillColor = styleColor(item, T.FillStyleSequence, T.PatternOnColorCIELabValue) ?? color;
      const fillOpacity = num(seq(item, T.FillStyleSequence)[0], T.PatternOnOpacity) ?? 1;
      const paint = {
        stroke: color, 'stroke-width': width, 'stroke-linejoin': 'round',
        fill: filled ? fillColor : 'none', 'fill-opacity': fillOpacity, 'data-type': type,
      };
      if (type === 'POINT') {
        const [cx, cy] = map(...pts[0]);
        g.append(el('circle', { cx: cx.toFixed(1), cy: cy.toFixed(1), r: 3, ...paint, fill: color, 'fill-opacity': 1 }));
      } else if (type === 'POLYLINE') {
        g.append(el(filled ? 'polygon' : 'polyline', { points: pts.map((p) => fmt(map(...p))).join(' '), ...paint }));
      } else if (type === 'INTERPOLATED') {
        g.append(el('path', { d: smooth(pts.map((p) => map(...p))) + (filled ? 'Z' : ''), ...paint }));
      } else if ((type === 'CIRCLE' && pts.length >= 2) || (type === 'ELLIPSE' && pts.length >= 4)) {
        let ring: Pt[];
        if (type === 'CIRCLE') {
          const r = Math.hypot(pts[1][0] - pts[0][0], pts[1][1] - pts[0][1]);
          ring = conic(pts[0], [r, 0], [0, r]);
        } else {
          const c: Pt = [(pts[0][0] + pts[1][0]) / 2, (pts[0][1] + pts[1][1]) / 2];
          ring = conic(c, [(pts[1][0] - pts[0][0]) / 2, (pts[1][1] - pts[0][1]) / 2], [(pts[3][0] - pts[2][0]) / 2, (pts[3][1] - pts[2][1]) / 2]);
        }
        g.append(el('polygon', { points: ring.map((p) => fmt(map(...p))).join(' '), ...paint }));
      }
    }
    for (const item of ann.texts) drawText(g, item, mapper, ann.color);
    svg.append(g);
  }
}

function drawText(g: SVGElement, item: DicomJson, mapper: (units: string) => (x: number, y: number) => Pt, layerColor: string): void {
  const text = str(item, T.UnformattedTextValue);
  const color = styleColor(item, T.TextStyleSequence, T.TextColorCIELabValue) ?? layerColor;
  const lines = text.split(/\r\n|\r|\n/);
  const size = 14;
  const tl = nums(item, T.BoundingBoxTopLeftHandCorner);
  const br = nums(item, T.BoundingBoxBottomRightHandCorner);
  const anchor = nums(item, T.AnchorPoint);
  const boxMap = mapper(str(item, T.BoundingBoxAnnotationUnits));
  const anchorMap = mapper(str(item, T.AnchorPointAnnotationUnits));
  const attrs = { fill: color, 'font-size': size, stroke: '#000', 'stroke-width': 3, 'paint-order': 'stroke', 'data-text': text };
  const write = (x: number, y: number, align: string) => {
    const t = el('text', { ...attrs, x: x.toFixed(1), y: y.toFixed(1), 'text-anchor': align });
    lines.forEach((line, i) => t.append(el('tspan', { x: x.toFixed(1), dy: i ? size * 1.2 : 0 }, line)));
    g.append(t);
  };
  let anchorPt: Pt | null = anchor.length >= 2 ? anchorMap(anchor[0], anchor[1]) : null;
  if (tl.length >= 2 && br.length >= 2) {
    const a = boxMap(tl[0], tl[1]);
    const b = boxMap(br[0], br[1]);
    const [left, right] = [Math.min(a[0], b[0]), Math.max(a[0], b[0])];
    const [top, bottom] = [Math.min(a[1], b[1]), Math.max(a[1], b[1])];
    const just = str(item, T.BoundingBoxTextHorizontalJustification).toUpperCase();
    const [x, align] = just === 'RIGHT' ? [right - 2, 'end'] : just === 'CENTER' ? [(left + right) / 2, 'middle'] : [left + 2, 'start'];
    write(x, top + size, align);
    if (anchorPt && str(item, T.AnchorPointVisibility).toUpperCase() === 'Y') {
      // A line from the box's nearest edge point to the anchor.
      const near: Pt = [Math.min(right, Math.max(left, anchorPt[0])), Math.min(bottom, Math.max(top, anchorPt[1]))];
      g.append(el('line', { x1: near[0].toFixed(1), y1: near[1].toFixed(1), x2: anchorPt[0].toFixed(1), y2: anchorPt[1].toFixed(1), stroke: color, 'stroke-width': 1.5 }));
    }
    anchorPt = null;
  }
  if (anchorPt) {
    if (str(item, T.AnchorPointVisibility).toUpperCase() === 'Y') {
      g.append(el('circle', { cx: anchorPt[0].toFixed(1), cy: anchorPt[1].toFixed(1), r: 2.5, fill: color }));
    }
    write(anchorPt[0] + 6, anchorPt[1] - 6, 'start');
  }
}

/** Display shutters (rectangular, circular, polygonal): outside each, the shutter colour. */
function drawShutters(svg: SVGSVGElement, json: DicomJson, pixel: (x: number, y: number) => Pt, w: number, h: number): void {
  const shapes = strs(json, T.ShutterShape).map((s) => s.toUpperCase());
  if (!shapes.length) return;
  const color = labToRgb(nums(json, T.ShutterPresentationColorCIELabValue)) ?? grey(num(json, T.ShutterPresentationValue)) ?? '#000000';
  const outside = (ring: Pt[]) => {
    const d = `M-10,-10H${w + 10}V${h + 10}H-10Z M${ring.map((p) => fmt(pixel(...p))).join('L')}Z`;
    svg.append(el('path', { d, fill: color, 'fill-rule': 'evenodd', class: 'ps-shutter' }));
  };
  if (shapes.includes('RECTANGULAR')) {
    const l = (num(json, T.ShutterLeftVerticalEdge) ?? 1) - 1;
    const r = num(json, T.ShutterRightVerticalEdge) ?? 0;
    const u = (num(json, T.ShutterUpperHorizontalEdge) ?? 1) - 1;
    const b = num(json, T.ShutterLowerHorizontalEdge) ?? 0;
    outside([[l, u], [r, u], [r, b], [l, b]]);
  }
  if (shapes.includes('CIRCULAR')) {
    const [row, col] = nums(json, T.CenterOfCircularShutter);
    const radius = num(json, T.RadiusOfCircularShutter) ?? 0;
    if (Number.isFinite(row) && Number.isFinite(col)) outside(conic([col - 0.5, row - 0.5], [radius, 0], [0, radius]));
  }
  if (shapes.includes('POLYGONAL')) {
    const v = nums(json, T.VerticesOfThePolygonalShutter);
    const ring: Pt[] = [];
    for (let i = 0; i + 1 < v.length; i += 2) ring.push([v[i + 1] - 0.5, v[i] - 0.5]);
    if (ring.length >= 3) outside(ring);
  }
}
