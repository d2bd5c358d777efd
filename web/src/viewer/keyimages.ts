// Key Object Selection documents (KOS, PS3.3 A.35.4, TID 2010): the images someone marked
// as key images, shown as a display set of their own whose stack is the referenced images
// (from whatever series of the study they come; their frames load as usual), and a mark
// on those images wherever they are shown.
import { DICOMWEB } from '../api';
import { num, nums, seq, str, TAG, type DicomJson } from '../dicom';
import { imageRef } from './gsps';
import { loadSeries, type DisplaySet } from './study';

export const KOS_CLASS = '1.2.840.10008.5.1.4.1.1.88.59';

const T = {
  CurrentRequestedProcedureEvidenceSequence: '0040A375',
  ReferencedSeriesSequence: '00081115',
  ReferencedSOPClassUID: '00081150',
  ReferencedFrameNumber: '00081160',
} as const;

export interface KeyRef {
  sop: string;
  frames: number[]; // empty: every frame
  seriesUid: string;
  studyUid: string;
}

export interface KeyObject {
  sop: string;
  seriesUid: string;
  title: string; // the document title's meaning: Of Interest, For Teaching, ...
  text: string; // Key Object Description
  date: string;
  refs: KeyRef[];
}

export function isKeyObject(json: DicomJson): boolean {
  return str(json, TAG.SOPClassUID) === KOS_CLASS;
}

export function parseKeyObject(json: DicomJson): KeyObject {
  // Where each referenced instance is: the evidence lists study, series, instances.
  const where = new Map<string, { studyUid: string; seriesUid: string }>();
  for (const study of seq(json, T.CurrentRequestedProcedureEvidenceSequence)) {
    for (const series of seq(study, T.ReferencedSeriesSequence)) {
      for (const sop of seq(series, TAG.ReferencedSOPSequence)) {
        where.set(str(sop, TAG.ReferencedSOPInstanceUID), {
          studyUid: str(study, TAG.StudyInstanceUID),
          seriesUid: str(series, TAG.SeriesInstanceUID),
        });
      }
    }
  }
  const refs: KeyRef[] = [];
  const texts: string[] = [];
  for (const item of seq(json, TAG.ContentSequence)) {
    const type = str(item, TAG.ValueType);
    if (type === 'TEXT') texts.push(str(item, TAG.TextValue));
    if (type !== 'IMAGE' && type !== 'COMPOSITE') continue; // COMPOSITE: an image referenced without its matrix
    for (const ref of seq(item, TAG.ReferencedSOPSequence)) {
      const sop = str(ref, TAG.ReferencedSOPInstanceUID);
      const place = where.get(sop);
      refs.push({ sop, frames: nums(ref, T.ReferencedFrameNumber), seriesUid: place?.seriesUid ?? '', studyUid: place?.studyUid ?? '' });
    }
  }
  return {
    sop: str(json, TAG.SOPInstanceUID),
    seriesUid: str(json, TAG.SeriesInstanceUID),
    title: str(seq(json, TAG.ConceptNameCodeSequence)[0], TAG.CodeMeaning) || 'Key images',
    text: texts.filter(Boolean).join(' '),
    date: str(json, TAG.ContentDate),
    refs,
  };
}

/**
 * The display set of a key object selection (of the KO series `series`): its stack is made
 * when it is first shown, from the referenced series' metadata (loaded as for any series)
 * and their imageIds, in the document's order. `find` looks a series of the study up.
 */
export function keySet(ko: KeyObject, series: DisplaySet, find: (seriesUid: string) => DisplaySet | undefined): DisplaySet {
  const first = ko.refs[0];
  const set: DisplaySet = {
    ...series,
    key: `ko:${ko.sop}`,
    keyObject: ko.sop,
    description: `${ko.title}${ko.text ? `: ${ko.text}` : ''}`,
    count: ko.refs.length,
    kind: 'image',
    instances: null,
    imageIds: [],
    frameCount: 0,
    multiframe: false,
    reconstructable: false,
    thumbnail: first ? `${DICOMWEB}/studies/${first.studyUid || series.study.uid}/series/${first.seriesUid}/instances/${first.sop}/thumbnail?viewport=160,160` : '',
    positions: [],
    loading: undefined,
  };
  set.load = async () => {
    const sources = new Map<string, DisplaySet>();
    for (const ref of ko.refs) {
      const source = find(ref.seriesUid);
      if (source) sources.set(ref.seriesUid, source);
    }
    await Promise.all([...sources.values()].map(loadSeries));
    const ids: string[] = [];
    const instances: DicomJson[] = [];
    let missing = 0;
    for (const ref of ko.refs) {
      const source = sources.get(ref.seriesUid);
      const found = source?.imageIds.filter((id) => {
        const { sop, frame } = imageRef(id);
        return sop === ref.sop && (!ref.frames.length || ref.frames.includes(frame));
      }) ?? [];
      if (!found.length) {
        missing++;
        continue;
      }
      ids.push(...found);
      const instance = source?.instances?.find((i) => str(i, TAG.SOPInstanceUID) === ref.sop);
      if (instance && !instances.includes(instance)) instances.push(instance);
      if (source?.multiframe) set.multiframe = true;
    }
    if (!ids.length) throw new Error('None of the key images is in this study.');
    set.imageIds = ids;
    set.instances = instances;
    set.frameCount = ids.length;
    set.missing = missing;
  };
  return set;
}

/** Instance numbers of a stack's images (for the overlay and automation). */
export function instanceNumbers(set: DisplaySet): (number | null)[] {
  return set.imageIds.map((id) => {
    const { sop } = imageRef(id);
    return num(set.instances?.find((i) => str(i, TAG.SOPInstanceUID) === sop), TAG.InstanceNumber) ?? null;
  });
}
