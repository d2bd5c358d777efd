// The DICOMweb queries that open a study: shared by the viewer and the early requests
// made before the viewer's code has loaded (main.ts), which must ask for the same URLs.
import { DICOMWEB } from '../api';

export const SERIES_FIELDS = ['SeriesDescription', 'SeriesNumber', 'Modality', 'NumberOfSeriesRelatedInstances', 'SeriesDate'];

export function studyUrl(uid: string): string {
  const q = new URLSearchParams({ StudyInstanceUID: uid });
  for (const f of ['PatientName', 'PatientID', 'PatientBirthDate', 'PatientSex', 'StudyDescription', 'StudyDate', 'StudyTime',
    'AccessionNumber', 'ReferringPhysicianName', 'ModalitiesInStudy', 'InstitutionName']) q.append('includefield', f);
  return `${DICOMWEB}/studies?${q}`;
}

export function seriesUrl(uid: string): string {
  const q = new URLSearchParams();
  for (const f of SERIES_FIELDS) q.append('includefield', f);
  return `${DICOMWEB}/studies/${uid}/series?${q}`;
}

