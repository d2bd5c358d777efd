"""Build realistic DICOM test data with pydicom (no large files in the repo)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass
class StudySpec:
    patient_id: str = "PAT001"
    patient_name: str = "DOE^JANE"
    birth_date: str = "19700101"
    sex: str = "F"
    study_date: str = "20240115"
    study_time: str = "101500"
    accession: str = "ACC001"
    description: str = "CT CHEST"
    referring: str = "HOUSE^GREGORY"
    modality: str = "CT"
    series: int = 1
    slices: int = 3
    size: int = 64
    study_uid: str = field(default_factory=generate_uid)


def ct_slice(spec: StudySpec, series_uid: str, series_number: int, index: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.birth_date
    ds.PatientSex = spec.sex
    ds.StudyInstanceUID = spec.study_uid
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.AccessionNumber = spec.accession
    ds.StudyDescription = spec.description
    ds.ReferringPhysicianName = spec.referring
    ds.StudyID = "1"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"series {series_number}"
    ds.Modality = spec.modality
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0, 0, float(index)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    ds.Rows = ds.Columns = spec.size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    pixels = (np.arange(spec.size * spec.size, dtype=np.int16).reshape(spec.size, spec.size) + index)
    ds.PixelData = pixels.tobytes()
    return ds


def make_study(spec: StudySpec) -> list[Dataset]:
    out = []
    for s in range(spec.series):
        series_uid = generate_uid()
        for i in range(spec.slices):
            out.append(ct_slice(spec, series_uid, s + 1, i))
    return out


def write_study(spec: StudySpec, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in make_study(spec):
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def stow_study(base: str, spec: StudySpec, token: str | None = None) -> list[Dataset]:
    """Make a study and store it in a running server with STOW-RS; its data sets."""
    import httpx
    from pydicom import dcmwrite
    from pydicom.filebase import DicomBytesIO

    datasets = make_study(spec)
    parts = []
    for ds in datasets:
        buffer = DicomBytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        parts.append(b"--B\r\nContent-Type: application/dicom\r\n\r\n" + buffer.getvalue() + b"\r\n")
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=B'}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    reply = httpx.post(f"{base}/dicomweb/studies", content=b"".join(parts) + b"--B--\r\n", headers=headers,
                       timeout=60)
    assert reply.status_code == 200, reply.text
    return datasets
