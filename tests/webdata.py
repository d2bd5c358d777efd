"""Studies for the web application's tests and benchmark: a CT phantom volume (with a
known PixelSpacing), its prior, compressed copies, a structured report, a PDF and a
multi-frame object. Realistic headers, deterministic pixels."""

from __future__ import annotations

from collections.abc import Iterable
from copy import deepcopy
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

INTERCEPT = -1024
# Ellipses in normalised [-1, 1] image coordinates: cx, cy, a, b, HU (added), z extent.
PHANTOM = (
    (0.0, 0.0, 0.82, 0.64, 1040.0, 1.3),  # body: air -> soft tissue (~40 HU)
    (-0.34, -0.05, 0.24, 0.40, -860.0, 0.95),  # right lung
    (0.34, -0.05, 0.24, 0.40, -860.0, 0.95),  # left lung
    (0.0, 0.45, 0.11, 0.09, 700.0, 1.5),  # vertebra
    (0.05, -0.22, 0.15, 0.13, 20.0, 0.5),  # heart
    (-0.05, 0.06, 0.04, 0.04, 160.0, 1.4),  # aorta (contrast)
)


@dataclass
class CtSpec:
    patient_id: str = "WEB001"
    patient_name: str = "TESTER^ANNA"
    birth_date: str = "19640312"
    sex: str = "F"
    study_date: str = "20240610"
    study_time: str = "093000"
    accession: str = "WACC001"
    description: str = "CT CHEST W/O CONTRAST"
    referring: str = "HOUSE^GREGORY"
    series_description: str = "AXIAL 1.0"
    slices: int = 24
    size: int = 256
    spacing: float = 0.5  # mm per pixel: a 100-pixel line is 50 mm
    thickness: float = 2.0
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    for_uid: str = field(default_factory=generate_uid)
    series_number: int = 2
    modality: str = "CT"


def phantom_hu(size: int, z: float, seed: int = 0) -> np.ndarray:
    """HU values of one slice at normalised height z in [-1, 1]."""
    lin = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    x, y = np.meshgrid(lin, lin)
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    for cx, cy, a, b, value, extent in PHANTOM:
        t = 1.0 - (z / extent) ** 2
        if t <= 0:
            continue
        k = float(np.sqrt(t))
        hu[((x - cx) / (a * k)) ** 2 + ((y - cy) / (b * k)) ** 2 <= 1.0] += value
    rng = np.random.default_rng(seed)
    hu += rng.standard_normal((size, size), dtype=np.float32) * 8.0
    return hu


def _meta(sop_class: str, sop_uid: str, syntax: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    return meta


def _patient_study(ds: Dataset, spec: CtSpec) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.birth_date
    ds.PatientSex = spec.sex
    ds.StudyInstanceUID = spec.study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = spec.study_time
    ds.AccessionNumber = spec.accession
    ds.StudyDescription = spec.description
    ds.ReferringPhysicianName = spec.referring
    ds.StudyID = "1"
    ds.InstitutionName = "Hilum Test Hospital"
    ds.Manufacturer = "HILUM TEST"


def ct_series(spec: CtSpec) -> list[Dataset]:
    """An axial CT volume of the phantom, uncompressed."""
    out = []
    for i in range(spec.slices):
        sop_uid = generate_uid()
        ds = Dataset()
        ds.file_meta = _meta(CTImageStorage, sop_uid)
        _patient_study(ds, spec)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = spec.modality
        ds.SeriesInstanceUID = spec.series_uid
        ds.SeriesNumber = spec.series_number
        ds.SeriesDescription = spec.series_description
        ds.FrameOfReferenceUID = spec.for_uid
        ds.PositionReferenceIndicator = ""
        ds.BodyPartExamined = "CHEST"
        ds.InstanceNumber = i + 1
        z = i * spec.thickness
        ds.ImagePositionPatient = [-spec.size * spec.spacing / 2, -spec.size * spec.spacing / 2, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z
        ds.SliceThickness = spec.thickness
        ds.PixelSpacing = [spec.spacing, spec.spacing]
        ds.Rows = ds.Columns = spec.size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        zn = -1.0 + 2.0 * (i + 0.5) / spec.slices
        hu = phantom_hu(spec.size, zn, seed=i)
        ds.PixelData = np.clip(np.rint(hu) - INTERCEPT, -1024, 4095).astype(np.int16).tobytes()
        out.append(ds)
    return out


def compressed(datasets: Iterable[Dataset], syntax: str) -> list[Dataset]:
    """The same images in another (lossless) transfer syntax, as new instances of a new series."""
    series_uid = generate_uid()
    out = []
    for ds in datasets:
        copy = deepcopy(ds)
        copy.SeriesInstanceUID = series_uid
        copy.SeriesNumber = {JPEG2000Lossless: 20, JPEGLSLossless: 21, RLELossless: 22}.get(syntax, 23)
        copy.SeriesDescription = {JPEG2000Lossless: "J2K", JPEGLSLossless: "JPEG-LS", RLELossless: "RLE"}[
            syntax
        ]
        copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        copy.compress(syntax, generate_instance_uid=False)
        out.append(copy)
    return out


def sr_document(spec: CtSpec, text: str = "No acute findings.") -> Dataset:
    """A Basic Text SR with a findings paragraph."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _meta("1.2.840.10008.5.1.4.1.1.88.11", sop_uid)
    _patient_study(ds, spec)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 90
    ds.SeriesDescription = "Report"
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = (
        "18748-4",
        "LN",
        "Diagnostic imaging report",
    )
    ds.ConceptNameCodeSequence = [title]
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    finding.ConceptNameCodeSequence = [name]
    finding.TextValue = text
    ds.ContentSequence = [finding]
    return ds


def pdf_document(spec: CtSpec) -> Dataset:
    """An Encapsulated PDF with one page of text."""
    content = b"BT /F1 24 Tf 72 700 Td (Hilum test report) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    pdf = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        pdf += b"%010d 00000 n \n" % offset
    pdf += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _meta(EncapsulatedPDFStorage, sop_uid)
    _patient_study(ds, spec)
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 91
    ds.SeriesDescription = "Scanned request"
    ds.InstanceNumber = 1
    ds.DocumentTitle = "Request form"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.BurnedInAnnotation = "YES"
    ds.EncapsulatedDocument = bytes(pdf) + (b"\0" if len(pdf) % 2 else b"")
    return ds


def multiframe_us(spec: CtSpec, frames: int = 12, size: int = 128) -> Dataset:
    """An 8-bit ultrasound clip (multi-frame) with a moving bright disc."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _meta(UltrasoundMultiFrameImageStorage, sop_uid)
    _patient_study(ds, spec)
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "US"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 30
    ds.SeriesDescription = "US clip"
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    ds.FrameTime = 40.0
    ds.FrameIncrementPointer = 0x00181063
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    yy, xx = np.mgrid[0:size, 0:size]
    data = np.zeros((frames, size, size), dtype=np.uint8)
    for f in range(frames):
        cx = size * (0.2 + 0.6 * f / max(1, frames - 1))
        data[f][(xx - cx) ** 2 + (yy - size / 2) ** 2 < (size / 8) ** 2] = 220
        data[f] += np.arange(size, dtype=np.uint8)[None, :] // 4
    ds.PixelData = data.tobytes()
    return ds


def stow(base: str, datasets: Iterable[Dataset], headers: dict[str, str] | None = None) -> None:
    """Store data sets in a running server with STOW-RS (in batches)."""
    import httpx
    from pydicom import dcmwrite
    from pydicom.filebase import DicomBytesIO

    batch: list[bytes] = []

    def send() -> None:
        body = b"".join(batch) + b"--B--\r\n"
        reply = httpx.post(
            f"{base}/dicomweb/studies",
            content=body,
            headers={
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=B',
                **(headers or {}),
            },
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        batch.clear()

    for ds in datasets:
        buffer = DicomBytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        batch.append(b"--B\r\nContent-Type: application/dicom\r\n\r\n" + buffer.getvalue() + b"\r\n")
        if len(batch) >= 50:
            send()
    if batch:
        send()
