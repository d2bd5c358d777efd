"""Rendered images (PS3.18 8.3.5.1, 10.4.1.1.3): one frame as JPEG/PNG for display.

Modality LUT (rescale) first, then the VOI: the client's ``window`` if given,
else the first window stored in the object, else the frame's value range.
MONOCHROME1 is inverted so bright means dense; colour images pass through.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from hilum.dicom.pixels import NotTranscodable, decoded_frame
from hilum.storage.base import Source, StorageError


@dataclass(frozen=True, slots=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"  # LINEAR | LINEAR_EXACT | SIGMOID


@dataclass(frozen=True, slots=True)
class Viewport:
    width: int
    height: int
    # Optional source region (sx, sy, sw, sh) in image pixels; negative sw/sh flip.
    region: tuple[int, int, int, int] | None = None


def parse_window(text: str) -> Window:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise ValueError("window is center,width[,function]")
    center, width = float(parts[0]), float(parts[1])
    if width <= 0:
        raise ValueError("window width must be positive")
    function = parts[2].upper() if len(parts) == 3 else "LINEAR"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise ValueError(f"unknown VOI LUT function {parts[2]!r}")
    return Window(center, width, function)


def parse_viewport(text: str) -> Viewport:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 6):
        raise ValueError("viewport is vw,vh or vw,vh,sx,sy,sw,sh")
    width, height = int(parts[0]), int(parts[1])
    if not (0 < width <= 8192 and 0 < height <= 8192):
        raise ValueError("viewport size must be 1..8192 pixels")
    region = None
    if len(parts) == 6:
        sx, sy, sw, sh = (int(float(p)) if p else 0 for p in parts[2:])
        region = (sx, sy, sw, sh)
    return Viewport(width, height, region)


def _first(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        return float(value[0]) if len(value) else None
    return float(value)  # type: ignore[arg-type]


def _header(path: Source) -> Dataset:
    with path.open("rb") as handle:
        return dcmread(handle, stop_before_pixels=True)


def render(
    path: Source,
    frame: int,
    *,
    media_type: str = "image/jpeg",
    window: Window | None = None,
    viewport: Viewport | None = None,
    quality: int = 90,
) -> bytes:
    ds = _header(path)
    if "Rows" not in ds:
        raise NotTranscodable("the instance has no image to render")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise NotTranscodable(f"Number of Frames {ds.get('NumberOfFrames')!r} is not a number") from None
    if not 0 <= frame < frames:
        raise IndexError(frame)
    try:
        image = _image(decoded_frame(path, frame), ds, window)
    except (StorageError, OSError, MemoryError):
        raise  # the archive's problem (damaged storage, I/O), not the object's
    except Exception as exc:  # Pixel Data missing, shorter than Rows x Columns, undecodable...
        raise NotTranscodable(
            f"its Pixel Data cannot be decoded: {type(exc).__name__}: {str(exc)[:200]}"
        ) from exc
    if viewport is not None:
        image = _apply_viewport(image, viewport)
    out = io.BytesIO()
    if media_type == "image/png":
        image.save(out, format="PNG", optimize=False)
    elif media_type == "image/gif":
        image.save(out, format="GIF")
    else:
        image.save(out, format="JPEG", quality=max(1, min(quality, 100)))
    return out.getvalue()


def _image(arr: np.ndarray, ds: Dataset, window: Window | None) -> Image.Image:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1:
        return Image.fromarray(_grey8(arr, ds, window), mode="L")
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.float64) * (255.0 / max(float(arr.max()), 1.0))).astype(np.uint8)
    return Image.fromarray(arr[..., :3], mode="RGB")


def _grey8(arr: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    values = arr.astype(np.float64)
    slope = _first(ds.get("RescaleSlope")) or 1.0
    intercept = _first(ds.get("RescaleIntercept")) or 0.0
    values = values * slope + intercept
    if window is None:
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            window = Window(center, width, str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper())
    if window is None:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / max(high - low, 1e-9)
    elif window.function == "SIGMOID":
        scaled = 1.0 / (1.0 + np.exp(-4.0 * (values - window.center) / window.width))
    elif window.function == "LINEAR_EXACT":
        scaled = (values - (window.center - window.width / 2)) / window.width
    else:  # PS3.3 C.11.2.1.2.1
        scaled = ((values - (window.center - 0.5)) / (window.width - 1)) + 0.5
    grey = np.clip(scaled, 0.0, 1.0) * 255.0
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        grey = 255.0 - grey
    return np.rint(grey).astype(np.uint8)


def _apply_viewport(image: Image.Image, viewport: Viewport) -> Image.Image:
    if viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        sw = sw or image.width - sx
        sh = sh or image.height - sy
        box = (min(sx, sx + sw), min(sy, sy + sh), max(sx, sx + sw), max(sy, sy + sh))
        image = image.crop(box)
        if sw < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    # Fit inside the viewport, keeping the aspect ratio (PS3.18 8.3.5.1.3).
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    return image
