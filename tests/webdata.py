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



# -- documents and video (tests/test_webapp_docs.py) ---------------------------------


def pdf_bytes(pages: list[bytes]) -> bytes:
    """A PDF (Helvetica, US Letter) with one page per content stream of ``pages``."""
    count = len(pages)
    kids = b" ".join(b"%d 0 R" % (3 + 2 * k) for k in range(count))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, count),
    ]
    font = 3 + 2 * count
    for k, content in enumerate(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (4 + 2 * k, font)
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    pdf = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        pdf += b"%010d 00000 n \n" % offset
    pdf += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(pdf)


def report_pages(pages: int) -> list[bytes]:
    """Content of a report's pages: black on white, each with a title, a solid black
    band (72..540 x 600..660 pt, 18% of the page's width x 7.6% of its height), lines
    of text and the page number: known dark content for pixel checks."""
    out = []
    for k in range(1, pages + 1):
        lines = b"".join(
            b"BT /F1 12 Tf 72 %d Td (Finding %d.%d: no abnormality in this region.) Tj ET\n"
            % (560 - 18 * i, k, i)
            for i in range(12)
        )
        title = b"BT /F1 24 Tf 72 700 Td (Hilum test report) Tj ET\n"
        band = b"0 0 0 rg 72 600 468 60 re f\n"
        footer = b"BT /F1 10 Tf 280 40 Td (Page %d of %d) Tj ET" % (k, pages)
        out.append(title + band + lines + footer)
    return out


def encapsulated_pdf(
    spec: CtSpec, pdf: bytes, title: str = "Discharge letter", series_number: int = 92
) -> Dataset:
    """An Encapsulated PDF (PS3.3 A.45.1) holding ``pdf``, in a series of its own."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _meta(EncapsulatedPDFStorage, sop_uid)
    _patient_study(ds, spec)
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = title
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = []
    ds.AcquisitionDateTime = spec.study_date + spec.study_time
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.BurnedInAnnotation = "YES"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    return ds


def damaged_pdf_bytes() -> bytes:
    """A PDF header followed by bytes that are no PDF (as a broken scanner or a cut-off
    transfer leaves): no objects, no cross-reference table, no trailer."""
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    noise = noise.replace(b"obj", b"xxx").replace(b"trailer", b"x")
    return b"%PDF-1.7\n" + noise


VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
MPEG2_MPML = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile / Main Level
MPEG4_HP41 = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264 High Profile / Level 4.1
HEVC_MP51 = "1.2.840.10008.1.2.4.107"  # HEVC/H.265 Main Profile / Level 5.1
# codec -> (transfer syntax, ffmpeg encoder options, LossyImageCompressionMethod)
VIDEO_CODECS: dict[str, tuple[str, list[str], str]] = {
    "h264": (
        MPEG4_HP41,
        ["-c:v", "libx264", "-profile:v", "high", "-level:v", "4.1", "-preset", "medium", "-crf",
            "18"],
        "ISO_14496_10",
    ),
    "mpeg2": (
        MPEG2_MPML,
        ["-c:v", "mpeg2video", "-profile:v", "4", "-level:v", "8", "-b:v", "4M", "-maxrate", "9M",
            "-bufsize", "1835k"],
        "ISO_13818_2",
    ),
    "hevc": (
        HEVC_MP51,
        ["-c:v", "libx265", "-profile:v", "main", "-tag:v", "hvc1", "-x265-params",
            "log-level=error:level-idc=51"],
        "ISO_23008_2",
    ),
}


def video_frames(frames: int = 50, width: int = 320, height: int = 240) -> np.ndarray:
    """RGB frames (frames, height, width, 3) of a synthetic clip: a blue-to-green
    horizontal gradient with a yellow disc moving left to right and a white bar moving
    down. The mean colour hardly changes from frame to frame; the picture does."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        t = f / max(1, frames - 1)
        rgb = np.empty((height, width, 3), dtype=np.float32)
        rgb[..., 0] = 30.0
        rgb[..., 1] = 40.0 + 140.0 * xx / width
        rgb[..., 2] = 200.0 - 140.0 * xx / width
        cx, cy, r = width * (0.15 + 0.7 * t), height / 2, height / 6
        rgb[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (240.0, 220.0, 40.0)
        rgb[np.abs(yy - height * (0.1 + 0.8 * t)) < height / 40] = 245.0
        out[f] = rgb.astype(np.uint8)
    return out


def encode_video(frames: np.ndarray, fps: int = 25, codec: str = "h264", container: str = "mp4") -> bytes:
    """``frames`` encoded (4:2:0, 8 bits, limited range, BT.709) with the ffmpeg binary of
    the imageio-ffmpeg package: codec h264, mpeg2 or hevc, in an MP4 container (moov
    first) or an MPEG-2 transport stream (container "ts")."""
    import subprocess
    import tempfile
    from pathlib import Path

    import imageio_ffmpeg

    count, height, width, _ = frames.shape
    muxer = ["-movflags", "+faststart", "-f", "mp4"] if container == "mp4" else ["-f", "mpegts"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"clip.{container}"
        # fmt: off
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
                *VIDEO_CODECS[codec][1], "-pix_fmt", "yuv420p", "-g", str(fps), "-bf", "2",
                "-color_range", "tv", "-colorspace", "bt709",
                "-color_primaries", "bt709", "-color_trc", "bt709",
                "-frames:v", str(count), *muxer, str(out),
            ],
            input=frames.tobytes(),
            check=True,
            timeout=120,
        )
        # fmt: on
        return out.read_bytes()


def video_photographic(
    spec: CtSpec,
    frames: int = 50,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    codec: str = "h264",
    container: str = "mp4",
    series_number: int = 40,
) -> Dataset:
    """A Video Photographic Image (PS3.3 A.32.7) of a synthetic clip (video_frames) in
    ``codec`` / ``container`` (encode_video), the stream in one fragment after an empty
    Basic Offset Table (PS3.5 8.2.5-8.2.7, A.4), the headers as the stream decodes."""
    from pydicom.encaps import encapsulate

    syntax, _, method = VIDEO_CODECS[codec]
    stream = encode_video(video_frames(frames, width, height), fps, codec, container)
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _meta(VIDEO_PHOTOGRAPHIC, sop_uid, syntax)
    _patient_study(ds, spec)
    ds.SOPClassUID = VIDEO_PHOTOGRAPHIC
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "XC"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"Video {codec.upper()} {container.upper()}"
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.AcquisitionDateTime = spec.study_date + spec.study_time
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = method
    ds.PatientOrientation = ""
    ds.BodyPartExamined = "ABDOMEN"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "818983003", "SCT", "Abdomen"
    ds.AnatomicRegionSequence = [region]
    ds.AcquisitionContextSequence = []
    # Image Pixel, as the stream decodes (PS3.5 8.2.5-8.2.7).
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = height, width
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    # Multi-frame and Cine.
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 1000.0 / fps
    ds.CineRate = fps
    ds.RecommendedDisplayFrameRate = fps
    ds.PreferredPlaybackSequencing = 0
    ds.StartTrim = 1
    ds.StopTrim = frames
    ds.ActualFrameDuration = round(1000 / fps)
    ds.PixelData = encapsulate([stream + (b"\0" if len(stream) % 2 else b"")], has_bot=False)
    ds["PixelData"].VR = "OB"
    return ds
