// The four corners of a viewport: who, what, where in the stack, how it is shown.
import { age, dicomDate, dicomTime, num, personName, str, TAG, type DicomJson } from '../dicom';
import { h, mount } from '../dom';
import { core } from './cs';
import type { DisplaySet } from './study';

export interface Corners {
  tl: HTMLElement; tr: HTMLElement; bl: HTMLElement; br: HTMLElement;
  top: HTMLElement; bottom: HTMLElement; left: HTMLElement; right: HTMLElement;
}

export function makeCorners(parent: HTMLElement): Corners {
  const corners = {
    tl: h('div.overlay.tl'), tr: h('div.overlay.tr'), bl: h('div.overlay.bl'), br: h('div.overlay.br'),
    top: h('div.orient.top'), bottom: h('div.orient.bottom'), left: h('div.orient.left'), right: h('div.orient.right'),
  };
  parent.append(...Object.values(corners));
  return corners;
}

/** Patient direction letters of a world (LPS) vector: up to two, strongest first. */
export function directionLetters(v: number[]): string {
  const names: [string, string][] = [['L', 'R'], ['P', 'A'], ['H', 'F']];
  const norm = Math.hypot(v[0], v[1], v[2]) || 1;
  return [0, 1, 2]
    .map((i) => ({ i, w: v[i] / norm }))
    .filter((c) => Math.abs(c.w) > 0.3)
    .sort((a, b) => Math.abs(b.w) - Math.abs(a.w))
    .slice(0, 2)
    .map((c) => names[c.i][c.w > 0 ? 0 : 1])
    .join('');
}

/** Orientation letters at the edges, from where the canvas edges are in the patient. */
export function fillOrientation(corners: Corners, toWorld: ((p: [number, number]) => number[]) | null, w: number, h: number): void {
  if (!toWorld) {
    for (const el of [corners.top, corners.bottom, corners.left, corners.right]) el.textContent = '';
    return;
  }
  const c = toWorld([w / 2, h / 2]);
  const edge = (p: [number, number]) => { const q = toWorld(p); return [q[0] - c[0], q[1] - c[1], q[2] - c[2]]; };
  corners.top.textContent = directionLetters(edge([w / 2, 0]));
  corners.bottom.textContent = directionLetters(edge([w / 2, h]));
  corners.left.textContent = directionLetters(edge([0, h / 2]));
  corners.right.textContent = directionLetters(edge([w, h / 2]));
}

export function fillStatic(corners: Corners, set: DisplaySet, instance: DicomJson | undefined): void {
  const study = set.study.json;
  const birth = str(study, TAG.PatientBirthDate) || str(instance, TAG.PatientBirthDate);
  const sex = str(study, TAG.PatientSex) || str(instance, TAG.PatientSex);
  mount(corners.tl,
    h('div', h('b', personName(str(study, TAG.PatientName) || str(instance, TAG.PatientName)))),
    h('div', str(study, TAG.PatientID)),
    h('div', [dicomDate(birth), age(birth, set.study.date), sex].filter(Boolean).join(' · ')),
    set.prior ? h('div.prior-tag', `PRIOR ${dicomDate(set.study.date)}`) : null,
  );
  mount(corners.tr,
    h('div', `${dicomDate(set.study.date)} ${dicomTime(str(study, TAG.StudyTime))}`.trim()),
    h('div', set.study.description),
    h('div', `S${set.number ?? '?'}: ${set.description || set.modality}`),
    h('div', str(study, TAG.InstitutionName) || str(instance, TAG.InstitutionName)),
  );
}

/** W/L as entered (DICOM's linear VOI function: width = upper - lower + 1). */
export function windowText(voi: { lower: number; upper: number }): string {
  const { windowWidth, windowCenter } = core.utilities.windowLevel.toWindowLevel(voi.lower, voi.upper);
  return `W ${Math.round(windowWidth)} L ${Math.round(windowCenter)}`;
}

export function fillDynamic(
  corners: Corners,
  set: DisplaySet,
  index: number,
  instance: DicomJson | undefined,
  voi: { lower: number; upper: number } | undefined,
  zoom: number | undefined,
  extra = '',
  mark = '', // key image
): void {
  const location = num(instance, TAG.SliceLocation);
  const thickness = num(instance, TAG.SliceThickness);
  const frames = num(instance, TAG.NumberOfFrames);
  mount(corners.bl,
    mark ? h('div.key-mark', mark) : null,
    h('div', `Im ${index + 1} / ${set.frameCount}${frames && frames > 1 ? ' (frames)' : ''}`),
    location !== undefined ? h('div', `Loc ${location.toFixed(1)} mm`) : null,
    thickness !== undefined ? h('div', `Thk ${thickness.toFixed(1)} mm`) : null,
    h('div', `${num(instance, TAG.Columns) ?? ''}×${num(instance, TAG.Rows) ?? ''}`),
  );
  mount(corners.br,
    voi ? h('div', windowText(voi)) : null,
    zoom !== undefined ? h('div', `Zoom ${zoom.toFixed(2)}×`) : null,
    extra ? h('div', extra) : null,
  );
}
