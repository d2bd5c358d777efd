// The DICOM JSON model (PS3.18 F.2): reading values, formatting them for people.

export type DicomValue = { vr: string; Value?: unknown[]; BulkDataURI?: string; InlineBinary?: string };
export type DicomJson = Record<string, DicomValue>;

export const TAG = {
  PatientName: '00100010',
  PatientID: '00100020',
  PatientBirthDate: '00100030',
  PatientSex: '00100040',
  PatientAge: '00101010',
  StudyInstanceUID: '0020000D',
  StudyDate: '00080020',
  StudyTime: '00080030',
  StudyDescription: '00081030',
  AccessionNumber: '00080050',
  ReferringPhysicianName: '00080090',
  ModalitiesInStudy: '00080061',
  InstitutionName: '00080080',
  NumberOfStudyRelatedSeries: '00201206',
  NumberOfStudyRelatedInstances: '00201208',
  SeriesInstanceUID: '0020000E',
  SeriesNumber: '00200011',
  SeriesDescription: '0008103E',
  SeriesDate: '00080021',
  Modality: '00080060',
  NumberOfSeriesRelatedInstances: '00201209',
  SOPInstanceUID: '00080018',
  SOPClassUID: '00080016',
  InstanceNumber: '00200013',
  NumberOfFrames: '00280008',
  ImagePositionPatient: '00200032',
  ImageOrientationPatient: '00200037',
  SliceLocation: '00201041',
  SliceThickness: '00180050',
  PixelSpacing: '00280030',
  Rows: '00280010',
  Columns: '00280011',
  FrameOfReferenceUID: '00200052',
  TransferSyntaxUID: '00020010',
  AvailableTransferSyntaxUID: '00083002',
  FrameTime: '00181063',
  CineRate: '00180040',
  ContentSequence: '0040A730',
  ConceptNameCodeSequence: '0040A043',
  ValueType: '0040A040',
  TextValue: '0040A160',
  CodeMeaning: '00080104',
  ConceptCodeSequence: '0040A168',
  MeasuredValueSequence: '0040A300',
  NumericValue: '0040A30A',
  MeasurementUnitsCodeSequence: '004008EA',
  CodeValue: '00080100',
  PersonName: '0040A123',
  DateTime: '0040A120',
  CompletionFlag: '0040A491',
  VerificationFlag: '0040A493',
  ContentDate: '00080023',
  ContentTime: '00080033',
  DocumentTitle: '00420010',
  EncapsulatedDocument: '00420011',
  MIMETypeOfEncapsulatedDocument: '00420012',
  PixelData: '7FE00010',
  RelationshipType: '0040A010',
  ReferencedSOPSequence: '00081199',
  ReferencedSOPInstanceUID: '00081155',
  GraphicType: '00700023',
  GraphicData: '00700022',
} as const;

export function first(ds: DicomJson | undefined, tag: string): unknown {
  return ds?.[tag]?.Value?.[0];
}

export function str(ds: DicomJson | undefined, tag: string): string {
  const v = first(ds, tag);
  if (v === undefined || v === null) return '';
  if (typeof v === 'object' && v !== null && 'Alphabetic' in v) return String((v as { Alphabetic: string }).Alphabetic ?? '');
  return String(v);
}

export function num(ds: DicomJson | undefined, tag: string): number | undefined {
  const v = first(ds, tag);
  if (v === undefined || v === null || v === '') return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
}

export function nums(ds: DicomJson | undefined, tag: string): number[] {
  return (ds?.[tag]?.Value ?? []).map((v) => Number(v));
}

export function strs(ds: DicomJson | undefined, tag: string): string[] {
  return (ds?.[tag]?.Value ?? []).map((v) => String(v));
}

export function seq(ds: DicomJson | undefined, tag: string): DicomJson[] {
  return (ds?.[tag]?.Value ?? []) as DicomJson[];
}

/** DOE^JANE^^DR → "DOE, JANE" (family, given middle). */
export function personName(value: string | null | undefined): string {
  if (!value) return '';
  const alphabetic = value.split('=')[0];
  const [family = '', given = '', middle = '', prefix = '', suffix = ''] = alphabetic.split('^');
  const rest = [prefix, given, middle].filter(Boolean).join(' ');
  return [family, rest].filter(Boolean).join(', ') + (suffix ? ` ${suffix}` : '');
}

/** 20240115 → 2024-01-15 */
export function dicomDate(value: string | null | undefined): string {
  if (!value || value.length < 8) return value ?? '';
  return `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6, 8)}`;
}

/** 101500.123 → 10:15 */
export function dicomTime(value: string | null | undefined): string {
  if (!value || value.length < 4) return value ?? '';
  return `${value.slice(0, 2)}:${value.slice(2, 4)}`;
}

export function toDicomDate(date: Date): string {
  const y = date.getFullYear();
  const m = String(date.getMonth() + 1).padStart(2, '0');
  const d = String(date.getDate()).padStart(2, '0');
  return `${y}${m}${d}`;
}

/** '2024-01-15' (input type=date) → '20240115' */
export function isoToDicomDate(value: string): string {
  return value.replaceAll('-', '');
}

export function age(birthDate: string | null | undefined, at?: string | null): string {
  if (!birthDate || birthDate.length < 8) return '';
  const ref = at && at.length >= 8 ? at : toDicomDate(new Date());
  let years = Number(ref.slice(0, 4)) - Number(birthDate.slice(0, 4));
  if (ref.slice(4) < birthDate.slice(4)) years -= 1;
  return years >= 0 ? `${years}y` : '';
}

// SOP classes that are not images the viewer renders with Cornerstone.
export const SR_PREFIX = '1.2.840.10008.5.1.4.1.1.88.';
export const ENCAPSULATED_PDF = '1.2.840.10008.5.1.4.1.1.104.1';
export const VIDEO_CLASSES = new Set([
  '1.2.840.10008.5.1.4.1.1.77.1.1.1', // Video Endoscopic
  '1.2.840.10008.5.1.4.1.1.77.1.2.1', // Video Microscopic
  '1.2.840.10008.5.1.4.1.1.77.1.4.1', // Video Photographic
]);
export const VIDEO_SYNTAXES = new Set([
  '1.2.840.10008.1.2.4.100', '1.2.840.10008.1.2.4.101', '1.2.840.10008.1.2.4.102',
  '1.2.840.10008.1.2.4.103', '1.2.840.10008.1.2.4.104', '1.2.840.10008.1.2.4.105',
  '1.2.840.10008.1.2.4.106', '1.2.840.10008.1.2.4.107', '1.2.840.10008.1.2.4.108',
]);
const NON_IMAGE = new Set([
  '1.2.840.10008.5.1.4.1.1.11.1', // GSPS
  '1.2.840.10008.5.1.4.1.1.66', // raw data
  '1.2.840.10008.5.1.4.1.1.66.4', // segmentation
  '1.2.840.10008.5.1.4.1.1.481.3', // RT structure set
  '1.2.840.10008.5.1.4.1.1.9.1.1', // waveforms ...
  '1.2.840.10008.5.1.4.1.1.9.1.2',
  '1.2.840.10008.5.1.4.1.1.9.4.1',
]);

export type SeriesKind = 'image' | 'sr' | 'pdf' | 'video' | 'other';

export function kindOf(instance: DicomJson): SeriesKind {
  const sopClass = str(instance, TAG.SOPClassUID);
  if (sopClass.startsWith(SR_PREFIX)) return 'sr';
  if (sopClass === ENCAPSULATED_PDF) return 'pdf';
  const syntax = str(instance, TAG.AvailableTransferSyntaxUID) || str(instance, TAG.TransferSyntaxUID);
  if (VIDEO_CLASSES.has(sopClass) || VIDEO_SYNTAXES.has(syntax)) return 'video';
  if (NON_IMAGE.has(sopClass) || sopClass.startsWith('1.2.840.10008.5.1.4.1.1.9.')) return 'other';
  if (instance[TAG.PixelData] || num(instance, TAG.Rows)) return 'image';
  return 'other';
}
