// A study as the viewer needs it: its series ("display sets") with their instances'
// metadata (WADO-RS), sorted, and the imageIds of the dicom-image-loader's wadors scheme.
import { DICOMWEB, getJSON } from '../api';
import { kindOf, num, nums, str, TAG, type DicomJson, type SeriesKind } from '../dicom';
import { loader } from './cs';
import { seriesUrl, studyUrl } from './urls';

export interface StudyInfo {
  uid: string;
  json: DicomJson;
  patientId: string;
  patientName: string;
  date: string;
  description: string;
  modalities: string[];
}

export interface DisplaySet {
  key: string; // SeriesInstanceUID
  study: StudyInfo;
  prior: boolean;
  seriesUid: string;
  number: number | undefined;
  modality: string;
  description: string;
  count: number; // instances (from QIDO)
  kind: SeriesKind | 'unknown';
  instances: DicomJson[] | null; // metadata, once loaded
  imageIds: string[];
  frameCount: number;
  multiframe: boolean;
  reconstructable: boolean;
  thumbnail: string;
  positions: number[]; // per image: position along the slice normal in mm (for synchronized scrolling)
  loading?: Promise<DisplaySet>;
  /** Made by the viewer rather than found in the archive (key images): fills the set in. */
  load?: () => Promise<void>;
  /** A key object selection's images (keyimages.ts): SOP Instance UID of the KO document. */
  keyObject?: string;
  missing?: number; // key images not found in the study
}

/** Series that are not shown as such: presentation states (applied to the images they
 * reference) and key object selections (shown as their own "key images" sets). */
export function isDerived(set: DisplaySet): boolean {
  return !set.keyObject && (set.modality === 'PR' || set.modality === 'KO');
}


export async function fetchStudy(uid: string): Promise<StudyInfo> {
  const found = await getJSON<DicomJson[]>(studyUrl(uid), { headers: { Accept: 'application/dicom+json' } });
  if (!found.length) {
    // Searches leave out studies one may not see; a path naming the study says why (403/404).
    await getJSON(`${DICOMWEB}/studies/${uid}/series?limit=1`, { headers: { Accept: 'application/dicom+json' } });
    throw new Error(`Study ${uid} was not found.`);
  }
  return studyInfo(found[0]);
}

export function studyInfo(json: DicomJson): StudyInfo {
  return {
    uid: str(json, TAG.StudyInstanceUID),
    json,
    patientId: str(json, TAG.PatientID),
    patientName: str(json, TAG.PatientName),
    date: str(json, TAG.StudyDate),
    description: str(json, TAG.StudyDescription),
    modalities: (json[TAG.ModalitiesInStudy]?.Value ?? []).map(String),
  };
}

/** Earlier studies of the same patient, newest first. */
export async function fetchPriors(study: StudyInfo): Promise<StudyInfo[]> {
  if (!study.patientId) return [];
  const q = new URLSearchParams({ PatientID: study.patientId, limit: '50' });
  for (const f of ['StudyDescription', 'StudyDate', 'StudyTime', 'ModalitiesInStudy', 'PatientName']) q.append('includefield', f);
  const found = await getJSON<DicomJson[]>(`${DICOMWEB}/studies?${q}`, { headers: { Accept: 'application/dicom+json' } });
  return found
    .map(studyInfo)
    .filter((s) => s.uid !== study.uid && (!study.date || !s.date || s.date <= study.date))
    .sort((a, b) => (b.date || '').localeCompare(a.date || ''));
}

export async function fetchSeries(study: StudyInfo, prior: boolean): Promise<DisplaySet[]> {
  const found = await getJSON<DicomJson[]>(seriesUrl(study.uid), { headers: { Accept: 'application/dicom+json' } });
  const sets = found.map((s): DisplaySet => {
    const seriesUid = str(s, TAG.SeriesInstanceUID);
    const modality = str(s, TAG.Modality);
    return {
      key: seriesUid,
      study,
      prior,
      seriesUid,
      number: num(s, TAG.SeriesNumber),
      modality,
      description: str(s, TAG.SeriesDescription),
      count: num(s, TAG.NumberOfSeriesRelatedInstances) ?? 0,
      kind: modality === 'SR' ? 'sr' : modality === 'DOC' ? 'pdf' : 'unknown',
      instances: null,
      imageIds: [],
      frameCount: 0,
      multiframe: false,
      reconstructable: false,
      thumbnail: `${DICOMWEB}/studies/${study.uid}/series/${seriesUid}/thumbnail?viewport=160,160`,
      positions: [],
    };
  });
  sets.sort((a, b) => (a.number ?? 1e9) - (b.number ?? 1e9));
  return sets;
}

function normal(orientation: number[]): [number, number, number] | null {
  if (orientation.length !== 6) return null;
  const [a, b, c, d, e, f] = orientation;
  return [b * f - c * e, c * d - a * f, a * e - b * d];
}

/** Metadata of the series, sorted for display, imageIds made and registered with the loader. */
export function loadSeries(set: DisplaySet): Promise<DisplaySet> {
  const fill = set.load;
  if (fill) set.loading ??= fill().then(() => set);
  set.loading ??= (async () => {
    const base = `${DICOMWEB}/studies/${set.study.uid}/series/${set.seriesUid}`;
    const instances = await getJSON<DicomJson[]>(`${base}/metadata`, { headers: { Accept: 'application/dicom+json' } });
    const images = instances.filter((i) => kindOf(i) === 'image');
    const kinds = new Set(instances.map(kindOf));
    set.kind = images.length ? 'image' : kinds.has('sr') ? 'sr' : kinds.has('pdf') ? 'pdf' : kinds.has('video') ? 'video' : 'other';
    // Sort along the slice normal when the geometry is there, else by InstanceNumber.
    const n = normal(nums(images[0], TAG.ImageOrientationPatient));
    const position = (i: DicomJson) => {
      const p = nums(i, TAG.ImagePositionPatient);
      return n && p.length === 3 ? p[0] * n[0] + p[1] * n[1] + p[2] * n[2] : NaN;
    };
    const positioned = n && images.every((i) => Number.isFinite(position(i)));
    // Highest position first: axial stacks from head to feet, as radiologists read them.
    images.sort((a, b) => positioned
      ? position(b) - position(a)
      : (num(a, TAG.InstanceNumber) ?? 0) - (num(b, TAG.InstanceNumber) ?? 0));
    set.instances = set.kind === 'image' ? images : instances;
    const origin = location.origin;
    set.imageIds = [];
    set.positions = [];
    for (const instance of images) {
      const sop = str(instance, TAG.SOPInstanceUID);
      const frames = num(instance, TAG.NumberOfFrames) ?? 1;
      if (frames > 1) set.multiframe = true;
      for (let f = 1; f <= frames; f++) {
        const imageId = `wadors:${origin}${base}/instances/${sop}/frames/${f}`;
        loader.wadors.metaDataManager.add(imageId, instance as unknown as Parameters<typeof loader.wadors.metaDataManager.add>[1]);
        set.imageIds.push(imageId);
        set.positions.push(positioned && frames === 1 ? position(instance) : -set.positions.length);
      }
    }
    set.frameCount = set.imageIds.length;
    const first = images[0];
    const sameOrientation = images.every((i) => nums(i, TAG.ImageOrientationPatient).join() === nums(first, TAG.ImageOrientationPatient).join());
    set.reconstructable = !set.multiframe && images.length >= 3 && !!positioned && sameOrientation &&
      ['CT', 'MR', 'PT', 'NM'].includes(set.modality) &&
      images.every((i) => num(i, TAG.Rows) === num(first, TAG.Rows) && num(i, TAG.Columns) === num(first, TAG.Columns));
    return set;
  })();
  set.loading.catch(() => { set.loading = undefined; });
  return set.loading;
}

export function frameRate(set: DisplaySet): number {
  const first = set.instances?.[0];
  const frameTime = num(first, TAG.FrameTime);
  if (frameTime && frameTime > 0) return Math.round(1000 / frameTime);
  return num(first, TAG.CineRate) ?? (set.multiframe ? 25 : 10);
}
