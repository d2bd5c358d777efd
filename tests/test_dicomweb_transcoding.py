"""WADO-RS transcoding: instances retrieved in another transfer syntax decode to the same pixels.

Lossless syntaxes must give identical pixels. Lossy ones are held to a PSNR bound
(over the stored bit depth), about 6 dB under what they measure here:
- JPEG baseline, encoded at quality 90: 44 dB on 8-bit grey, 47 dB on SC_rgb (4:2:2);
  bound 38 dB, which is still above what is called visually lossless (~35-40 dB),
  while a wrong colour space, byte order or frame falls far below 20 dB.
- JPEG 2000 lossy, encoded for a high PSNR target: 54 dB on 8-bit, 80 dB on 16-bit data;
  bound 45 dB.
Each syntax's output is also checked with dciodvfy: no error the original lacks
(except HTJ2K: the installed dicom3tools (2022) does not know its transfer syntax and
cannot read any HTJ2K file; those are checked by decoding with pydicom only).
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import requests
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from conftest import DEFAULT_BACKENDS, require_tool
from test_dicomweb_support import (
    STOW_TYPE,
    base_url,
    encode,
    make_client,
    multipart,
    parse_multipart,
    problem,
    psnr,
    renamed,
    running_server,
    sample,
    sample_bytes,
)

HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
LOSSLESS = [ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, HTJ2K_LOSSLESS]


def _grey8() -> Dataset:
    """An 8-bit greyscale image with natural content: CT_small scaled to 0..255."""
    ds = renamed(sample("CT_small.dcm"))
    values = ds.pixel_array.astype(np.float64)
    grey = np.round((values - values.min()) / (values.max() - values.min()) * 255).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PixelData = grey.tobytes()
    ds["PixelData"].VR = "OB"
    return ds


SOURCES = {
    "ct16": lambda: sample("CT_small.dcm"),  # 16-bit signed
    "grey8": _grey8,
    "rgb8": lambda: sample("SC_rgb.dcm"),  # colour, 8-bit
    "mframe": lambda: sample("emri_small.dcm"),  # 10 frames, 12 bits stored
}


@pytest.fixture(scope="module")
def tx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # Transcoding does not touch the index beyond finding the instance: one backend is enough.
    with running_server(DEFAULT_BACKENDS[0], tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="module")
def originals(tx: Any) -> dict[str, Dataset]:
    client, _ = make_client(tx)
    datasets = {name: make() for name, make in SOURCES.items()}
    # One series of an 8-bit and a 16-bit image (in that order).
    datasets["mixed8"] = _grey8()
    datasets["mixed16"] = renamed(sample("CT_small.dcm"), datasets["mixed8"].StudyInstanceUID)
    datasets["mixed16"].SeriesInstanceUID = datasets["mixed8"].SeriesInstanceUID
    datasets["mixed8"].InstanceNumber, datasets["mixed16"].InstanceNumber = 1, 2
    client.store_instances(list(datasets.values()))
    # Stored compressed, uploaded byte for byte: JPEG 2000 (lossy-capable .91) and JPEG baseline
    # (RGB; YBR_FULL_422; YBR_FULL_422 multi-frame).
    for name in COMPRESSED:
        body = multipart([("application/dicom", sample_bytes(name))])
        response = httpx.post(
            f"{base_url(tx)}/studies", content=body, headers={"Content-Type": STOW_TYPE}, timeout=30
        )
        assert response.status_code == 200, response.text
        datasets[name] = sample(name)
    return datasets


COMPRESSED = (
    "JPEG2000.dcm",
    "SC_rgb_dcmtk_+eb+cr.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "examples_ybr_color.dcm",
)


def _ids(ds: Dataset) -> tuple[str, str, str]:
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def _instance_url(server: Any, ds: Dataset) -> str:
    study, series, sop = _ids(ds)
    return f"{base_url(server)}/studies/{study}/series/{series}/instances/{sop}"


def _retrieve(server: Any, ds: Dataset, ts: str) -> tuple[Dataset, bytes]:
    """The instance in ``ts``: with dicomweb-client, or httpx for syntaxes it does not know."""
    if ts == HTJ2K_LOSSLESS:
        accept = f'multipart/related; type="application/dicom"; transfer-syntax={ts}'
        response = httpx.get(_instance_url(server, ds), headers={"Accept": accept}, timeout=60)
        assert response.status_code == 200, response.text
        ((headers, body),) = parse_multipart(response)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={ts}"
        return dcmread(io.BytesIO(body)), body
    client, _ = make_client(server)
    got = client.retrieve_instance(*_ids(ds), media_types=(("application/dicom", ts),))
    return got, encode(got)


def _check_pixels(original: Dataset, got: Dataset, ts: str) -> None:
    expected, decoded = original.pixel_array, got.pixel_array
    assert decoded.shape == expected.shape and decoded.dtype == expected.dtype
    if ts in LOSSLESS:
        assert np.array_equal(decoded, expected)
        return
    peak = float(2 ** int(original.BitsStored) - 1)
    bound = {JPEG2000: 45.0, JPEGBaseline8Bit: 38.0}[ts]
    quality = psnr(expected, decoded, peak)
    assert quality > bound, f"PSNR {quality:.1f} dB"
    assert got.LossyImageCompression == "01"
    method = {JPEGBaseline8Bit: "ISO_10918_1", JPEG2000: "ISO_15444_1"}[ts]
    assert got.LossyImageCompressionMethod == method  # PS3.3 C.7.6.1.1.5
    assert float(got.LossyImageCompressionRatio) > 1


CASES = [
    *[(name, ts) for name in ("ct16", "rgb8", "mframe") for ts in LOSSLESS],
    ("grey8", JPEGBaseline8Bit),
    ("rgb8", JPEGBaseline8Bit),
    ("ct16", JPEG2000),
    ("grey8", JPEG2000),
    ("mframe", JPEG2000),
]


@pytest.mark.parametrize(("name", "ts"), CASES)
def test_transcode(tx: Any, originals: dict[str, Dataset], name: str, ts: str) -> None:
    original = originals[name]
    got, _ = _retrieve(tx, original, ts)
    assert got.file_meta.TransferSyntaxUID == ts
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert got.get("NumberOfFrames", 1) == original.get("NumberOfFrames", 1)
    _check_pixels(original, got, ts)


def _dciodvfy_errors(data: bytes, folder: Path, name: str) -> set[str]:
    path = folder / name
    path.write_bytes(data)
    run = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return {line.strip() for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")}


@pytest.mark.parametrize(
    ("name", "ts"),
    [("ct16", ts) for ts in LOSSLESS if ts != HTJ2K_LOSSLESS]
    + [("rgb8", JPEGBaseline8Bit), ("ct16", JPEG2000), ("rgb8", RLELossless), ("rgb8", JPEG2000Lossless)]
    + [("mframe", JPEG2000), ("mframe", JPEGLSLossless)],
)
def test_transcoded_output_passes_dciodvfy(
    tx: Any, originals: dict[str, Dataset], tmp_path: Path, name: str, ts: str
) -> None:
    original = originals[name]
    _, data = _retrieve(tx, original, ts)
    before = _dciodvfy_errors(encode(original), tmp_path, "original.dcm")
    after = _dciodvfy_errors(data, tmp_path, "transcoded.dcm")
    assert after - before == set()


def test_as_stored_is_byte_for_byte(tx: Any, originals: dict[str, Dataset]) -> None:
    for name in COMPRESSED:
        ds = originals[name]
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        response = httpx.get(_instance_url(tx, ds), headers={"Accept": accept}, timeout=30)
        ((headers, body),) = parse_multipart(response)
        stored = ds.file_meta.TransferSyntaxUID
        assert headers["content-type"] == f"application/dicom; transfer-syntax={stored}"
        assert body == sample_bytes(name)
        client, _ = make_client(tx)
        got = client.retrieve_instance(*_ids(ds), media_types=(("application/dicom", "*"),))
        assert got == ds and got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


def test_compressed_stored_data_decompresses(tx: Any, originals: dict[str, Dataset]) -> None:
    for name in COMPRESSED:
        original = originals[name]
        got, _ = _retrieve(tx, original, ExplicitVRLittleEndian)
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(got.pixel_array, original.pixel_array), name  # YBR comes as RGB
        if original.SamplesPerPixel == 3:
            assert got.PhotometricInterpretation == "RGB"
        frames = int(original.get("NumberOfFrames", 1))
        assert len(got.PixelData) == frames * original.Rows * original.Columns * original.SamplesPerPixel * (
            original.BitsAllocated // 8
        )


def test_what_cannot_be_produced_is_406(tx: Any, originals: dict[str, Dataset]) -> None:
    client, _ = make_client(tx)
    cases = [
        ("ct16", JPEGBaseline8Bit, "8-bit"),  # JPEG baseline of a 16-bit CT
        ("mframe", JPEGBaseline8Bit, "8-bit"),
        ("SC_rgb_dcmtk_+eb+cr.dcm", JPEG2000Lossless, "lossy"),  # lossy data in a lossless syntax
    ]
    for name, ts, words in cases:
        with pytest.raises(requests.HTTPError) as raised:
            client.retrieve_instance(*_ids(originals[name]), media_types=(("application/dicom", ts),))
        assert words in problem(raised.value.response, 406)
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4.5'
    problem(httpx.get(_instance_url(tx, originals["ct16"]), headers={"Accept": accept}), 406)
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=not-a-uid'
    problem(httpx.get(_instance_url(tx, originals["ct16"]), headers={"Accept": accept}), 400)


def test_frames_in_other_syntaxes(tx: Any, originals: dict[str, Dataset]) -> None:
    """Frames re-encoded one by one decode to the frames of the original."""
    client, _ = make_client(tx)
    original = originals["mframe"]
    expected = original.pixel_array
    for media_type, ts in (
        ("image/jls", JPEGLSLossless),
        ("image/jp2", JPEG2000Lossless),
        ("image/dicom-rle", RLELossless),
    ):
        frames = client.retrieve_instance_frames(*_ids(original), [2, 9], media_types=((media_type, ts),))
        decoder = get_decoder(ts)
        for frame, index in zip(frames, (1, 8), strict=True):
            decoded, _ = decoder.as_array(
                encapsulate([frame]),
                rows=original.Rows,
                columns=original.Columns,
                samples_per_pixel=1,
                bits_allocated=16,
                bits_stored=int(original.BitsStored),
                pixel_representation=0,
                photometric_interpretation="MONOCHROME2",
                number_of_frames=1,
            )
            assert np.array_equal(decoded.reshape(expected[index].shape), expected[index]), media_type
    # HTJ2K frames (dicomweb-client does not know image/jphc): httpx.
    accept = f'multipart/related; type="image/jphc"; transfer-syntax={HTJ2K_LOSSLESS}'
    response = httpx.get(_instance_url(tx, original) + "/frames/3", headers={"Accept": accept}, timeout=30)
    ((headers, frame),) = parse_multipart(response)
    assert headers["content-type"] == f"image/jphc; transfer-syntax={HTJ2K_LOSSLESS}"
    decoded, _ = get_decoder(HTJ2K_LOSSLESS).as_array(
        encapsulate([frame]),
        rows=original.Rows,
        columns=original.Columns,
        samples_per_pixel=1,
        bits_allocated=16,
        bits_stored=int(original.BitsStored),
        pixel_representation=0,
        photometric_interpretation="MONOCHROME2",
        number_of_frames=1,
    )
    assert np.array_equal(decoded.reshape(expected[2].shape), expected[2])
    # JPEG baseline frames of an 8-bit colour image: plain JPEG files.
    rgb = originals["rgb8"]
    (jpeg,) = client.retrieve_instance_frames(
        *_ids(rgb), [1], media_types=(("image/jpeg", JPEGBaseline8Bit),)
    )
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (rgb.Columns, rgb.Rows)
    assert psnr(rgb.pixel_array, np.asarray(image.convert("RGB")), 255) > 38


def test_a_series_only_partly_transcodable(tx: Any, originals: dict[str, Dataset]) -> None:
    """JPEG baseline for a series of an 8-bit and a 16-bit image: once the answer has
    started, an instance that cannot be transcoded goes as stored, and its part says so."""
    study, series, _ = _ids(originals["mixed8"])
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={JPEGBaseline8Bit}'
    response = httpx.get(f"{base_url(tx)}/studies/{study}/series/{series}", headers={"Accept": accept})
    assert response.status_code == 200
    parts = parse_multipart(response)
    assert [headers["content-type"] for headers, _ in parts] == [
        f"application/dicom; transfer-syntax={JPEGBaseline8Bit}",
        f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}",
    ]
    first, second = (dcmread(io.BytesIO(body)) for _, body in parts)
    assert first.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert psnr(originals["mixed8"].pixel_array, first.pixel_array, 255) > 38
    assert np.array_equal(second.pixel_array, originals["mixed16"].pixel_array)
