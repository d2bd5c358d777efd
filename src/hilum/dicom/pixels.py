"""Pixel data of stored instances: frames as stored, decoded, re-encoded; whole-instance transcoding.

Frames are read straight from the file: native frames by offset, encapsulated
ones through the offset table (pydicom.encaps.get_frame on the open file), so a
frame of a multi-GB multi-frame object costs one frame of memory.
Encoders: pydicom's (RLE, JPEG-LS via pyjpegls, JPEG 2000 via openjpeg) and
imagecodecs' (JPEG baseline, HTJ2K via OpenJPH) where pydicom has none.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import pixel_array
from pydicom.tag import BaseTag
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from hilum.dicom.filemeta import IMPLEMENTATION_CLASS_UID
from hilum.storage.base import Source

HTJ2K_LOSSLESS = UID("1.2.840.10008.1.2.4.201")
HTJ2K_LOSSLESS_RPCL = UID("1.2.840.10008.1.2.4.202")
HTJ2K_LOSSY = UID("1.2.840.10008.1.2.4.203")
NATIVE = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, UID("1.2.840.10008.1.2.1.99")}
)

# Transfer syntax -> media type of a single frame (PS3.18 Table 8.7.3-2/-3).
FRAME_MEDIA_TYPE: dict[str, str] = {
    ExplicitVRLittleEndian: "application/octet-stream",
    JPEGBaseline8Bit: "image/jpeg",
    UID("1.2.840.10008.1.2.4.51"): "image/jpeg",
    UID("1.2.840.10008.1.2.4.57"): "image/jpeg",
    UID("1.2.840.10008.1.2.4.70"): "image/jpeg",
    JPEGLSLossless: "image/jls",
    JPEGLSNearLossless: "image/jls",
    JPEG2000Lossless: "image/jp2",
    JPEG2000: "image/jp2",
    HTJ2K_LOSSLESS: "image/jphc",
    HTJ2K_LOSSLESS_RPCL: "image/jphc",
    HTJ2K_LOSSY: "image/jphc",
    RLELossless: "image/dicom-rle",
    UID("1.2.840.10008.1.2.4.100"): "video/mpeg",
    UID("1.2.840.10008.1.2.4.102"): "video/mp4",
    UID("1.2.840.10008.1.2.4.103"): "video/mp4",
}
# Media type -> transfer syntax a client gets when it names no transfer-syntax (PS3.18 Table 8.7.3-2).
DEFAULT_FRAME_SYNTAX: dict[str, str] = {
    "application/octet-stream": ExplicitVRLittleEndian,
    "image/jpeg": JPEGBaseline8Bit,
    "image/jls": JPEGLSLossless,
    "image/jp2": JPEG2000Lossless,
    "image/jphc": HTJ2K_LOSSLESS,
    "image/dicom-rle": RLELossless,
}
# Earlier names of frame media types, still sent by clients (e.g. dicomweb-client offers both).
MEDIA_TYPE_ALIASES: dict[str, str] = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
LOSSY = frozenset(
    {JPEGBaseline8Bit, JPEG2000, JPEGLSNearLossless, HTJ2K_LOSSY, UID("1.2.840.10008.1.2.4.51")}
)


class NotTranscodable(Exception):
    """The asked-for transfer syntax cannot be produced for this object (HTTP 406)."""


@dataclass(frozen=True, slots=True)
class PixelInfo:
    transfer_syntax: str
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    planar: int
    frames: int
    offset: int  # file offset of the Pixel Data value
    length: int  # 0xFFFFFFFF when encapsulated

    @property
    def encapsulated(self) -> bool:
        return self.transfer_syntax not in NATIVE

    @property
    def frame_length(self) -> int:
        return self.rows * self.columns * self.samples * self.bits_allocated // 8


def pixel_info(path: Source) -> PixelInfo:
    """Where the pixel data is and how it is laid out; NotTranscodable if there is none."""
    with path.open("rb") as handle:
        ds = dcmread(handle, defer_size=256, stop_before_pixels=False)
    raw = ds._dict.get(BaseTag(0x7FE00010))
    if raw is None:
        raise NotTranscodable("the instance has no Pixel Data")
    if not isinstance(raw, RawDataElement) or raw.value_tell is None:
        raise NotTranscodable("cannot locate the Pixel Data in the stored file")
    ts = str(ds.file_meta.TransferSyntaxUID)
    if ts == UID("1.2.840.10008.1.2.1.99"):
        raise NotTranscodable("frames of deflated instances are not served by offset")
    return PixelInfo(
        transfer_syntax=ts,
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        samples=int(ds.get("SamplesPerPixel", 1) or 1),
        bits_allocated=int(ds.get("BitsAllocated", 16) or 16),
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16),
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        planar=int(ds.get("PlanarConfiguration", 0) or 0),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        offset=raw.value_tell,
        length=raw.length,
    )


def stored_frame(path: Source, info: PixelInfo, index: int) -> bytes:
    """Frame ``index`` (0-based) exactly as stored (compressed, or native bytes)."""
    if not 0 <= index < info.frames:
        raise IndexError(index)
    with path.open("rb") as handle:
        if info.encapsulated:
            handle.seek(info.offset)
            return get_frame(handle, index, number_of_frames=info.frames)
        if info.bits_allocated == 1:
            # Frames of single-bit data are not byte aligned in the Pixel Data (PS3.5 8.1.1);
            # each is sent bit-packed on its own, starting at a byte boundary.
            per_frame = info.rows * info.columns * info.samples
            first_bit = index * per_frame
            shift = first_bit % 8
            handle.seek(info.offset + first_bit // 8)
            packed = np.frombuffer(handle.read((shift + per_frame + 7) // 8), np.uint8)
            bits = np.unpackbits(packed, bitorder="little")[shift : shift + per_frame]
            return np.packbits(bits, bitorder="little").tobytes()
        handle.seek(info.offset + index * info.frame_length)
        data = handle.read(info.frame_length)
    if info.transfer_syntax == ExplicitVRBigEndian and info.bits_allocated > 8:
        width = info.bits_allocated // 8
        data = np.frombuffer(data, f">u{width}").astype(f"<u{width}").tobytes()
    return data


def decoded_frame(path: Source, index: int) -> np.ndarray:
    """Frame ``index`` decoded to an array (color as RGB)."""
    if isinstance(path, Path):
        return pixel_array(str(path), index=index)
    with path.open("rb") as handle:  # read through the storage area (e.g. encrypted at rest)
        return pixel_array(handle, index=index)


def native_frame(path: Source, info: PixelInfo, index: int) -> bytes:
    """Frame ``index`` as uncompressed little endian bytes."""
    if not info.encapsulated:
        return stored_frame(path, info, index)
    return np.ascontiguousarray(decoded_frame(path, index)).astype(_dtype(info), copy=False).tobytes()


def _dtype(info: PixelInfo) -> np.dtype[Any]:
    if info.bits_allocated <= 8:
        return np.dtype(np.int8 if info.pixel_representation else np.uint8)
    if info.bits_allocated <= 16:
        return np.dtype("<i2" if info.pixel_representation else "<u2")
    return np.dtype("<i4" if info.pixel_representation else "<u4")


# -- encoders -------------------------------------------------------------------------
def _imagecodecs() -> Any:
    import imagecodecs

    return imagecodecs


def _encode_jpeg_baseline(arr: np.ndarray, info: PixelInfo) -> bytes:
    if info.bits_stored > 8 or arr.dtype.itemsize != 1:
        raise NotTranscodable(
            f"JPEG baseline holds 8-bit samples only; this image has {info.bits_stored} bits stored"
        )
    if arr.ndim == 3:
        return bytes(_imagecodecs().jpeg8_encode(arr, level=90, subsampling="422"))
    return bytes(_imagecodecs().jpeg8_encode(arr, level=90))


def _encode_htj2k(lossless: bool) -> Callable[[np.ndarray, PixelInfo], bytes]:
    def encode(arr: np.ndarray, info: PixelInfo) -> bytes:
        codecs = _imagecodecs()
        if lossless:
            return bytes(codecs.htj2k_encode(arr, level=0))
        return bytes(codecs.htj2k_encode(arr, level=90))

    return encode


def _encode_pydicom(ts: str) -> Callable[[np.ndarray, PixelInfo], bytes]:
    def encode(arr: np.ndarray, info: PixelInfo) -> bytes:
        from pydicom.pixels.encoders.base import get_encoder
        from pydicom.pixels.utils import compress  # noqa: F401 - ensures encoders are registered

        encoder = get_encoder(UID(ts))
        if not encoder.is_available:
            raise NotTranscodable(f"no encoder for {UID(ts).name} is installed")
        kwargs: dict[str, Any] = {
            "rows": info.rows,
            "columns": info.columns,
            "samples_per_pixel": info.samples,
            "bits_allocated": info.bits_allocated,
            "bits_stored": info.bits_stored,
            "pixel_representation": info.pixel_representation,
            "photometric_interpretation": "RGB" if info.samples == 3 else info.photometric,
            "number_of_frames": 1,
            "planar_configuration": 0,
        }
        if ts == JPEG2000:
            kwargs["j2k_psnr"] = [80]
        if ts == JPEGLSNearLossless:
            kwargs["jls_error"] = 2
        try:
            return bytes(encoder.encode(np.ascontiguousarray(arr), **kwargs))
        except Exception as exc:
            raise NotTranscodable(f"{UID(ts).name} cannot encode this image: {exc}") from None

    return encode


ENCODERS: dict[str, Callable[[np.ndarray, PixelInfo], bytes]] = {
    JPEGBaseline8Bit: _encode_jpeg_baseline,
    HTJ2K_LOSSLESS: _encode_htj2k(True),
    HTJ2K_LOSSLESS_RPCL: _encode_htj2k(True),
    HTJ2K_LOSSY: _encode_htj2k(False),
    JPEG2000Lossless: _encode_pydicom(JPEG2000Lossless),
    JPEG2000: _encode_pydicom(JPEG2000),
    JPEGLSLossless: _encode_pydicom(JPEGLSLossless),
    JPEGLSNearLossless: _encode_pydicom(JPEGLSNearLossless),
    RLELossless: _encode_pydicom(RLELossless),
}


def frame_in(path: Source, info: PixelInfo, index: int, ts: str) -> bytes:
    """Frame ``index`` in transfer syntax ``ts`` ("*" = as stored)."""
    if ts in ("*", info.transfer_syntax):
        return stored_frame(path, info, index)
    if ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return native_frame(path, info, index)
    encoder = ENCODERS.get(ts)
    if encoder is None:
        raise NotTranscodable(f"cannot encode frames as {UID(ts).name or ts}")
    if info.transfer_syntax in LOSSY and ts not in LOSSY:
        raise NotTranscodable("lossy compressed pixel data cannot be served in a lossless syntax")
    return encoder(decoded_frame(path, index), info)


# -- whole instances ----------------------------------------------------------------
def transcode_instance(path: Source, ts: str) -> bytes:
    """The stored Part 10 file re-encoded in transfer syntax ``ts`` (the whole object in memory)."""
    target = UID(ts)
    with path.open("rb") as handle:
        ds = dcmread(handle)
    stored = UID(str(ds.file_meta.TransferSyntaxUID))
    if stored == target:
        return path.read_bytes()
    has_pixels = "PixelData" in ds
    if stored in LOSSY and target not in LOSSY and target not in NATIVE and has_pixels:
        raise NotTranscodable("lossy compressed pixel data cannot be served in a lossless syntax")
    if has_pixels and stored.is_compressed:
        try:
            ds.decompress()
        except Exception as exc:
            raise NotTranscodable(f"cannot decode the stored {stored.name}: {exc}") from None
    if target in NATIVE:
        if target == UID("1.2.840.10008.1.2.1.99"):
            raise NotTranscodable("deflated output is not offered")
        return _write(ds, target)
    if not has_pixels:
        raise NotTranscodable(f"{target.name} needs pixel data; this object has none")
    info = PixelInfo(
        transfer_syntax=ExplicitVRLittleEndian,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        samples=int(ds.get("SamplesPerPixel", 1)),
        bits_allocated=int(ds.BitsAllocated),
        bits_stored=int(ds.get("BitsStored", ds.BitsAllocated)),
        pixel_representation=int(ds.get("PixelRepresentation", 0)),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        planar=int(ds.get("PlanarConfiguration", 0) or 0),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        offset=0,
        length=0,
    )
    encoder = ENCODERS.get(target)
    if encoder is None:
        raise NotTranscodable(f"cannot encode instances as {target.name or ts}")
    arr = ds.pixel_array
    frames = [arr] if info.frames == 1 else list(arr)
    encoded = [encoder(frame, info) for frame in frames]
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    if info.samples == 3:
        ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = (
            "YBR_FULL_422"
            if target == JPEGBaseline8Bit
            else ("YBR_RCT" if target == JPEG2000Lossless else "YBR_ICT" if target == JPEG2000 else "RGB")
        )
    if target in LOSSY:
        ratio = info.frame_length * info.frames / max(1, sum(len(f) for f in encoded))
        _record_lossy(ds, _LOSSY_METHOD.get(target, "ISO_10918_1"), ratio)
    return _write(ds, target)


# PS3.3 C.7.6.1.1.5.1: Lossy Image Compression Method defined terms.
_LOSSY_METHOD = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEG2000: "ISO_15444_1",
    JPEGLSNearLossless: "ISO_14495_1",
    HTJ2K_LOSSY: "ISO_15444_15",
}


def _record_lossy(ds: Dataset, method: str, ratio: float) -> None:
    """Lossy Image Compression "01" with its method and ratio appended to any earlier ones
    (PS3.3 C.7.6.1.1.5; Type 1C in the enhanced image modules)."""

    def earlier(keyword: str) -> list[Any]:
        value = ds.get(keyword)
        if value is None or value == "":
            return []
        return list(value) if isinstance(value, MultiValue | list) else [value]

    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = [*earlier("LossyImageCompressionMethod"), method]
    ds.LossyImageCompressionRatio = [*earlier("LossyImageCompressionRatio"), f"{ratio:.3f}"]


def _write(ds: Dataset, ts: UID) -> bytes:
    out = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()
