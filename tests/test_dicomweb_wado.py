"""WADO-RS (PS3.18 10.4) and WADO-URI (PS3.18 9) against a real `hilum serve`.

dicomweb-client retrieves instances, metadata, frames, bulk data and rendered
images; httpx covers what it has no call for (thumbnails, WADO-URI, raw errors).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import requests
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from conftest import DEFAULT_BACKENDS
from factory import StudySpec, make_study
from test_dicomweb_support import (
    base_url,
    local,
    make_client,
    problem,
    renamed,
    running_server,
    sample,
    stored_files,
)


@dataclass
class Data:
    study: list[Dataset]  # generated CT, 2 series x 3, native 16-bit signed
    ct: Dataset  # CT_small.dcm: native, private OB values, trailing padding
    emri: Dataset  # emri_small.dcm: native multi-frame (10 frames, 12 bits stored)
    emri_rle: Dataset  # emri_small_RLE.dcm (new UIDs): RLE multi-frame, same pixels
    j2k: Dataset  # JPEG2000.dcm: JPEG 2000 (.91)
    rgb_rle: Dataset  # SC_rgb_rle.dcm: RLE colour
    sr: Dataset  # test-SR.dcm: no pixels, a Content Sequence longer than the deferral size
    implicit: Dataset  # MR_small_implicit.dcm: implicit VR little endian
    bits: Dataset  # single-bit multi-frame, frames not byte aligned (3 x 5x5)


BIT_FRAMES = np.random.default_rng(7).integers(0, 2, (3, 5, 5), dtype=np.uint8)


def _single_bit() -> Dataset:
    (ds,) = make_study(StudySpec(slices=1, patient_id="W-BITS", size=5))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    del ds.RescaleIntercept, ds.RescaleSlope
    ds.NumberOfFrames = 3
    packed = np.packbits(BIT_FRAMES.ravel(), bitorder="little").tobytes()  # 75 bits: 10 bytes
    ds.PixelData = packed
    ds["PixelData"].VR = "OB"
    return ds


def uids(ds: Dataset) -> tuple[str, str, str]:
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


@pytest.fixture(scope="module", params=DEFAULT_BACKENDS)
def wado(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_server(request.param, tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="module")
def data(wado: Any) -> Data:
    client, _ = make_client(wado)
    study = make_study(StudySpec(series=2, slices=3, patient_id="W-GEN"))
    emri_rle = renamed(sample("emri_small_RLE.dcm"))
    data = Data(
        study,
        sample("CT_small.dcm"),
        sample("emri_small.dcm"),
        emri_rle,
        sample("JPEG2000.dcm"),
        sample("SC_rgb_rle.dcm"),
        sample("test-SR.dcm"),
        sample("MR_small_implicit.dcm"),
        _single_bit(),
    )
    client.store_instances(
        [*study, data.ct, data.emri, data.emri_rle, data.j2k, data.rgb_rle, data.sr, data.implicit, data.bits]
    )
    return data


def _pixels_equal(got: Dataset, original: Dataset) -> None:
    assert np.array_equal(got.pixel_array, original.pixel_array)


# -- instances ----------------------------------------------------------------------------------
def test_retrieve_study_series_and_instance(wado: Any, data: Data) -> None:
    client, _ = make_client(wado)
    by_uid = {ds.SOPInstanceUID: ds for ds in data.study}
    study_uid = data.study[0].StudyInstanceUID
    got = client.retrieve_study(study_uid)
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(by_uid)
    for ds in got:
        assert ds == by_uid[ds.SOPInstanceUID]
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    series_uid = data.study[3].SeriesInstanceUID
    got = client.retrieve_series(study_uid, series_uid)
    assert {ds.SOPInstanceUID for ds in got} == {ds.SOPInstanceUID for ds in data.study[3:]}
    assert [int(ds.InstanceNumber) for ds in got] == [1, 2, 3]  # in instance order
    ds = client.retrieve_instance(*uids(data.ct))
    assert ds == data.ct
    assert ds.PixelData == data.ct.PixelData


def test_compressed_instances_come_as_explicit_vr_little_endian_by_default(wado: Any, data: Data) -> None:
    client, _ = make_client(wado)
    (got,) = client.retrieve_series(data.emri_rle.StudyInstanceUID, data.emri_rle.SeriesInstanceUID)
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert got.NumberOfFrames == 10
    _pixels_equal(got, data.emri)  # RLE is lossless: the very pixels of emri_small
    as_stored = client.retrieve_instance(*uids(data.emri_rle), media_types=(("application/dicom", "*"),))
    assert as_stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert as_stored.PixelData == data.emri_rle.PixelData


def test_single_part_application_dicom(wado: Any, data: Data) -> None:
    study, series, sop = uids(data.ct)
    url = f"{base_url(wado)}/studies/{study}/series/{series}/instances/{sop}"
    response = httpx.get(url, headers={"Accept": "application/dicom"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom")
    assert dcmread(io.BytesIO(response.content)) == data.ct
    # A study is several instances: only multipart/related will do.
    response = httpx.get(f"{base_url(wado)}/studies/{study}", headers={"Accept": "application/dicom"})
    problem(response, 406)


# -- metadata -----------------------------------------------------------------------------------
def _expected_json(ds: Dataset) -> dict[str, Any]:
    return {k: v for k, v in ds.to_json_dict(bulk_data_threshold=1 << 30).items() if not k.endswith("0000")}


def _check_metadata(client: Any, server: Any, model: dict[str, Any], original: Dataset) -> int:
    """Non-bulk attributes equal pydicom's JSON of the original; bulk ones resolve to its bytes."""
    expected = _expected_json(original)
    assert set(model) == set(expected)
    bulk = 0
    for key, value in model.items():
        if "BulkDataURI" not in value:
            assert value == expected[key], key
            continue
        bulk += 1
        assert value["vr"] == expected[key]["vr"]
        element = original[int(key, 16)]
        parts = client.retrieve_bulkdata(local(value["BulkDataURI"], server))
        if key == "7FE00010" and original.file_meta.TransferSyntaxUID.is_compressed:
            frames = list(generate_frames(element.value, number_of_frames=original.get("NumberOfFrames", 1)))
            assert len(parts) == len(frames)
            continue  # pixels of compressed data: see test_bulkdata_of_compressed_pixel_data
        assert parts == [element.value], key
    return bulk


def test_metadata_at_three_levels(wado: Any, data: Data) -> None:
    client, _ = make_client(wado)
    study_uid = data.study[0].StudyInstanceUID
    models = client.retrieve_study_metadata(study_uid)
    assert len(models) == 6
    assert all(list(model) == sorted(model) for model in models)  # PS3.18 F.2.2: ordered by tag
    by_uid = {ds.SOPInstanceUID: ds for ds in data.study}
    for model in models:
        assert _check_metadata(client, wado, model, by_uid[model["00080018"]["Value"][0]]) == 1
    models = client.retrieve_series_metadata(study_uid, data.study[4].SeriesInstanceUID)
    assert [m["00200013"]["Value"][0] for m in models] == [1, 2, 3]
    for original in (data.ct, data.emri, data.emri_rle, data.j2k, data.rgb_rle, data.sr, data.implicit):
        (model,) = client.retrieve_series_metadata(original.StudyInstanceUID, original.SeriesInstanceUID)
        assert model == client.retrieve_instance_metadata(*uids(original))
        bulk = _check_metadata(client, wado, model, original)
        # CT_small: Pixel Data and a private OB of 2068 bytes; the SR's long Content
        # Sequence stays inline (PS3.18 F.2.2: no BulkDataURI for SQ).
        assert bulk == {"CT_small": 2, "test-SR": 0}.get(Path(original.filename).stem, 1)


def test_metadata_is_served_without_reading_stored_files(wado: Any, data: Data) -> None:
    """The DICOM JSON is kept in the index: metadata does not need the stored file."""
    client, _ = make_client(wado)
    marker = data.sr.SOPInstanceUID.encode()
    (path,) = [p for p in stored_files(wado) if marker in p.read_bytes()]
    hidden = path.with_name(path.name + ".hidden")
    path.rename(hidden)
    try:
        model = client.retrieve_instance_metadata(*uids(data.sr))
        assert model == _expected_json(data.sr)
        assert len(client.retrieve_study_metadata(data.sr.StudyInstanceUID)) == 1
        with pytest.raises(requests.HTTPError) as raised:  # the instance itself is gone
            client.retrieve_instance(*uids(data.sr))
        problem(raised.value.response, 500)
    finally:
        hidden.rename(path)


def test_bulkdata_of_compressed_pixel_data(wado: Any, data: Data) -> None:
    client, _ = make_client(wado)
    uri = client.retrieve_instance_metadata(*uids(data.emri_rle))["7FE00010"]["BulkDataURI"]
    uri = local(uri, wado)
    native = data.emri.PixelData
    size = len(native) // 10
    # As uncompressed octets (the PS3.18 8.7.3.3 default), one part per frame.
    parts = client.retrieve_bulkdata(uri, media_types=("application/octet-stream",))
    assert b"".join(parts) == native and len(parts) == 10 and len(parts[0]) == size
    # As stored, when asked for.
    parts = client.retrieve_bulkdata(uri, media_types=(("image/dicom-rle", "*"),))
    assert parts == list(generate_frames(data.emri_rle.PixelData, number_of_frames=10))


# -- frames -------------------------------------------------------------------------------------
def test_frames_of_native_instances(wado: Any, data: Data) -> None:
    client, _ = make_client(wado)
    (frame,) = client.retrieve_instance_frames(*uids(data.ct), frame_numbers=[1])
    assert frame == data.ct.PixelData
    size = len(data.emri.PixelData) // 10
    frames = client.retrieve_instance_frames(*uids(data.emri), frame_numbers=[2, 10, 5])
    assert frames == [data.emri.PixelData[(n - 1) * size : n * size] for n in (2, 10, 5)]
    octets = client.retrieve_instance_frames(*uids(data.emri), [3], media_types=("application/octet-stream",))
    assert octets == [data.emri.PixelData[2 * size : 3 * size]]


def test_frames_of_single_bit_images_are_packed_each_from_a_byte_boundary(wado: Any, data: Data) -> None:
    client, _ = make_client(wado)
    assert np.array_equal(data.bits.pixel_array, BIT_FRAMES)
    frames = client.retrieve_instance_frames(*uids(data.bits), [1, 2, 3])
    assert frames == [np.packbits(f.ravel(), bitorder="little").tobytes() for f in BIT_FRAMES]
    assert [len(f) for f in frames] == [4, 4, 4]  # 25 bits each
    png = client.retrieve_instance_frames_rendered(*uids(data.bits), [2], media_types=("image/png",))
    assert np.array_equal(_image(png, "PNG"), BIT_FRAMES[1] * 255)


def test_frames_of_compressed_instances(wado: Any, data: Data) -> None:
    client, _ = make_client(wado)
    size = len(data.emri.PixelData) // 10
    # Decompressed by default (octets of an RLE-stored multi-frame)...
    frames = client.retrieve_instance_frames(
        *uids(data.emri_rle), [1, 7], media_types=("application/octet-stream",)
    )
    assert frames == [data.emri.PixelData[:size], data.emri.PixelData[6 * size : 7 * size]]
    # ... or as stored.
    stored = list(generate_frames(data.emri_rle.PixelData, number_of_frames=10))
    for media_type in ("image/dicom-rle", "image/x-dicom-rle"):
        got = client.retrieve_instance_frames(*uids(data.emri_rle), [4], media_types=((media_type, "*"),))
        assert got == [stored[3]], media_type
    (j2k,) = client.retrieve_instance_frames(*uids(data.j2k), [1], media_types=(("image/jp2", "*"),))
    assert j2k == next(generate_frames(data.j2k.PixelData, number_of_frames=1))
    (octets,) = client.retrieve_instance_frames(
        *uids(data.rgb_rle), [1], media_types=("application/octet-stream",)
    )
    assert octets == data.rgb_rle.pixel_array.tobytes()  # RGB, interleaved


@pytest.mark.parametrize(
    ("frames", "status"), [("11", 404), ("1,99", 404), ("0", 400), ("a", 400), ("1,,2", 400), ("-1", 400)]
)
def test_frame_errors(wado: Any, data: Data, frames: str, status: int) -> None:
    study, series, sop = uids(data.emri)
    url = f"{base_url(wado)}/studies/{study}/series/{series}/instances/{sop}/frames/{frames}"
    problem(httpx.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'}), status)


def test_frames_of_an_instance_without_pixels(wado: Any, data: Data) -> None:
    client, _ = make_client(wado)
    with pytest.raises(requests.HTTPError) as raised:
        client.retrieve_instance_frames(*uids(data.sr), [1])
    assert raised.value.response.status_code == 404


# -- rendered -----------------------------------------------------------------------------------
def _image(body: bytes, fmt: str) -> np.ndarray:
    image = Image.open(io.BytesIO(body))
    assert image.format == fmt
    return np.asarray(image)


def test_rendered(wado: Any, data: Data) -> None:
    client, _ = make_client(wado)
    png = _image(client.retrieve_instance_rendered(*uids(data.ct), media_types=("image/png",)), "PNG")
    assert png.shape == (128, 128) and png.dtype == np.uint8
    assert png.min() == 0 and png.max() == 255  # no stored window: the value range
    jpeg = _image(client.retrieve_instance_rendered(*uids(data.ct), media_types=("image/jpeg",)), "JPEG")
    assert jpeg.shape == (128, 128)
    assert np.abs(jpeg.astype(int) - png.astype(int)).mean() < 8
    narrow = _image(
        client.retrieve_instance_rendered(
            *uids(data.ct), media_types=("image/png",), params={"window": "100,200"}
        ),
        "PNG",
    )
    wide = _image(
        client.retrieve_instance_rendered(
            *uids(data.ct), media_types=("image/png",), params={"window": "100,4000"}
        ),
        "PNG",
    )
    assert not np.array_equal(narrow, wide)
    assert (narrow == 255).sum() > (wide == 255).sum()  # a narrow window saturates more pixels
    small = _image(
        client.retrieve_instance_rendered(
            *uids(data.ct), media_types=("image/png",), params={"viewport": "32,32"}
        ),
        "PNG",
    )
    assert small.shape == (32, 32)
    wide_box = _image(
        client.retrieve_instance_rendered(
            *uids(data.ct), media_types=("image/png",), params={"viewport": "64,32"}
        ),
        "PNG",
    )
    assert wide_box.shape == (32, 32)  # fits inside the viewport, aspect kept
    # A source region (vw,vh,sx,sy,sw,sh): the top-left quarter at full resolution, then mirrored.
    region = client.retrieve_instance_rendered(
        *uids(data.ct), media_types=("image/png",), params={"viewport": "64,64,0,0,64,64"}
    )
    assert np.array_equal(_image(region, "PNG"), png[:64, :64])
    flipped = client.retrieve_instance_rendered(
        *uids(data.ct), media_types=("image/png",), params={"viewport": "64,64,64,0,-64,64"}
    )
    assert np.array_equal(_image(flipped, "PNG"), png[:64, :64][:, ::-1])
    rgb = _image(client.retrieve_instance_rendered(*uids(data.rgb_rle), media_types=("image/png",)), "PNG")
    assert np.array_equal(rgb, data.rgb_rle.pixel_array)  # colour passes through unchanged


def test_rendered_frames(wado: Any, data: Data) -> None:
    client, _ = make_client(wado)
    frames = [
        _image(
            client.retrieve_instance_frames_rendered(*uids(data.emri), [n], media_types=("image/png",)), "PNG"
        )
        for n in (1, 5)
    ]
    assert frames[0].shape == (64, 64) and not np.array_equal(frames[0], frames[1])
    same = client.retrieve_instance_frames_rendered(*uids(data.emri_rle), [5], media_types=("image/png",))
    assert np.array_equal(_image(same, "PNG"), frames[1])  # RLE-stored: the same image
    study, series, sop = uids(data.emri)
    url = f"{base_url(wado)}/studies/{study}/series/{series}/instances/{sop}/frames/11/rendered"
    problem(httpx.get(url, headers={"Accept": "image/png"}), 404)


def test_rendered_errors(wado: Any, data: Data) -> None:
    client, _ = make_client(wado)
    with pytest.raises(requests.HTTPError) as raised:
        client.retrieve_instance_rendered(*uids(data.sr), media_types=("image/jpeg",))
    problem(raised.value.response, 406)  # an SR is not an image
    study, series, sop = uids(data.ct)
    url = f"{base_url(wado)}/studies/{study}/series/{series}/instances/{sop}/rendered"
    for params in (
        {"window": "1"},
        {"window": "10,0"},
        {"viewport": "0,10"},
        {"quality": "0"},
        {"window": "a,b"},
    ):
        problem(httpx.get(url, params=params, headers={"Accept": "image/jpeg"}), 400)
    problem(httpx.get(url, headers={"Accept": "application/pdf"}), 406)


def test_thumbnails(wado: Any, data: Data) -> None:
    base = base_url(wado)
    study, series, sop = uids(data.ct)
    for url in (
        f"{base}/studies/{study}/thumbnail",
        f"{base}/studies/{study}/series/{series}/thumbnail",
        f"{base}/studies/{study}/series/{series}/instances/{sop}/thumbnail",
    ):
        response = httpx.get(url, headers={"Accept": "image/jpeg"}, timeout=30)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        assert _image(response.content, "JPEG").shape == (128, 128)
    response = httpx.get(f"{base}/studies/{study}/thumbnail", params={"viewport": "40,20"})
    assert _image(response.content, "JPEG").shape == (20, 20)
    study, series, _ = uids(data.sr)
    problem(httpx.get(f"{base}/studies/{study}/series/{series}/thumbnail"), 406)


# -- WADO-URI -----------------------------------------------------------------------------------
def test_wado_uri(wado: Any, data: Data) -> None:
    study, series, sop = uids(data.ct)
    url = f"{base_url(wado)}/wado"
    ids = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    response = httpx.get(url, params={**ids, "contentType": "application/dicom"}, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
    assert dcmread(io.BytesIO(response.content)) == data.ct
    response = httpx.get(url, params=ids, timeout=30)  # image/jpeg by default
    assert response.headers["content-type"] == "image/jpeg"
    assert _image(response.content, "JPEG").shape == (128, 128)
    response = httpx.get(url, params={**ids, "contentType": "image/png", "rows": "64"}, timeout=30)
    assert _image(response.content, "PNG").shape == (64, 64)
    response = httpx.get(
        url,
        params={**ids, "contentType": "application/dicom", "transferSyntax": "1.2.840.10008.1.2.5"},
        timeout=30,
    )
    got = dcmread(io.BytesIO(response.content))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert np.array_equal(got.pixel_array, data.ct.pixel_array)
    # Errors.
    problem(httpx.get(url, params={**ids, "requestType": "RETRIEVE"}), 400)
    problem(httpx.get(url, params={"requestType": "WADO", "studyUID": study}), 400)
    problem(httpx.get(url, params={**ids, "objectUID": "1.2.3.4"}), 404)
    problem(httpx.get(url, params={**ids, "contentType": "text/html"}), 406)
    problem(httpx.get(url, params={**ids, "frameNumber": "2"}), 404)
    sr = dict(zip(("studyUID", "seriesUID", "objectUID"), uids(data.sr), strict=True))
    problem(httpx.get(url, params={"requestType": "WADO", **sr, "contentType": "image/jpeg"}), 406)
    # An SR asked for as "image/jpeg, application/dicom": the first that can be produced.
    response = httpx.get(
        url, params={"requestType": "WADO", **sr, "contentType": "image/jpeg,application/dicom"}
    )
    assert response.status_code == 200 and dcmread(io.BytesIO(response.content)) == data.sr


def test_wado_uri_transfer_syntax(wado: Any, data: Data) -> None:
    """PS3.18 9.4.2.4: explicit VR little endian unless asked otherwise (a lossy form may stay)."""
    url = f"{base_url(wado)}/wado"

    def get(ds: Dataset, **extra: str) -> httpx.Response:
        ids = dict(zip(("studyUID", "seriesUID", "objectUID"), uids(ds), strict=True))
        return httpx.get(
            url, params={"requestType": "WADO", **ids, "contentType": "application/dicom", **extra}
        )

    for stored in (data.emri_rle, data.implicit):  # RLE, implicit VR
        got = dcmread(io.BytesIO(get(stored).content))
        assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert np.array_equal(got.pixel_array, stored.pixel_array)
    got = dcmread(io.BytesIO(get(data.j2k).content))
    assert got.file_meta.TransferSyntaxUID == data.j2k.file_meta.TransferSyntaxUID  # possibly lossy: as is
    got = dcmread(io.BytesIO(get(data.ct, transferSyntax="1.2.840.10008.1.2.4.80").content))
    assert np.array_equal(got.pixel_array, data.ct.pixel_array)
    problem(get(data.ct, transferSyntax="not-a-uid"), 400)
    problem(get(data.ct, transferSyntax="1.2.3.4.5"), 406)


# -- unknown and malformed UIDs -----------------------------------------------------------------
UNKNOWN = "1.2.3.999"


def test_unknown_uids_are_404_everywhere(wado: Any, data: Data) -> None:
    client, _ = make_client(wado)
    study, series, sop = uids(data.ct)
    calls = [
        lambda: client.retrieve_study(UNKNOWN),
        lambda: client.retrieve_series(study, UNKNOWN),
        lambda: client.retrieve_series(UNKNOWN, series),
        lambda: client.retrieve_instance(study, series, UNKNOWN),
        lambda: client.retrieve_study_metadata(UNKNOWN),
        lambda: client.retrieve_series_metadata(study, UNKNOWN),
        lambda: client.retrieve_instance_metadata(study, UNKNOWN, sop),
        lambda: client.retrieve_instance_frames(study, series, UNKNOWN, [1]),
        lambda: client.retrieve_instance_rendered(study, series, UNKNOWN),
        lambda: client.retrieve_instance_frames_rendered(study, series, UNKNOWN, [1]),
        lambda: client.retrieve_bulkdata(
            f"{base_url(wado)}/studies/{study}/series/{series}/instances/{UNKNOWN}/bulkdata/7FE00010"
        ),
    ]
    for number, call in enumerate(calls):
        with pytest.raises(requests.HTTPError) as raised:
            call()
        problem(raised.value.response, 404), number
    base = base_url(wado)
    for path in (
        f"/studies/{UNKNOWN}/thumbnail",
        f"/studies/{study}/series/{UNKNOWN}/thumbnail",
        f"/studies/{study}/series/{series}/instances/{UNKNOWN}/thumbnail",
        f"/studies/{study}/series/{series}/instances/{sop}/bulkdata/00091234",
    ):
        problem(httpx.get(base + path), 404)


def test_malformed_uids_and_tags_are_400(wado: Any, data: Data) -> None:
    study, series, sop = uids(data.ct)
    base = base_url(wado)
    for path in (
        "/studies/not-a-uid",
        f"/studies/{study}/series/x.y",
        f"/studies/{study}/series/{series}/instances/{'1' * 65}",
        f"/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE0",
    ):
        problem(httpx.get(base + path), 400)
