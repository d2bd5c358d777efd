"""The web viewer's non-image objects, end to end: encapsulated PDF drawn by pdf.js
(pages, page count, zoom, a phone, a damaged file) and DICOM video (H.264 in MP4 and in
an MPEG-2 transport stream played, MPEG-2 and HEVC refused with a message), checked by
the pixels on screen and in the page's canvases. Also what WADO-RS bulk data answers for
a video's Pixel Data: the stream itself, not frames."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from webapp_util import SHOTS, WEBAPP_MARKS, Site, login, open_viewer, shot, site_server
from webdata import (
    CtSpec,
    ct_series,
    damaged_pdf_bytes,
    encapsulated_pdf,
    pdf_bytes,
    report_pages,
    stow,
    video_frames,
    video_photographic,
)

pytest.importorskip("playwright.sync_api")
pytest.importorskip("imageio_ffmpeg")
from playwright.sync_api import Browser, BrowserContext, Page, expect

pytestmark = WEBAPP_MARKS

SPEC = CtSpec(patient_id="DOC001", patient_name="PAPER^PETER", accession="DACC001", slices=3, size=128)
FPS, FRAMES, WIDTH, HEIGHT = 25, 50, 320, 240
PAGES = 3


class DocSite(Site):
    streams: dict[str, bytes]
    pdf: bytes
    damaged: bytes


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocSite]:
    with site_server(tmp_path_factory.mktemp("webapp-docs")) as plain:
        site = DocSite(plain.server, plain.admin_password)
        site.pdf, site.damaged = pdf_bytes(report_pages(PAGES)), damaged_pdf_bytes()
        report = encapsulated_pdf(SPEC, site.pdf, "Discharge letter", 92)
        broken = encapsulated_pdf(SPEC, site.damaged, "Scanned form", 93)
        videos = {
            "h264": video_photographic(SPEC, FRAMES, WIDTH, HEIGHT, FPS, "h264", "mp4", 40),
            "h264-ts": video_photographic(SPEC, FRAMES, WIDTH, HEIGHT, FPS, "h264", "ts", 41),
            "mpeg2": video_photographic(SPEC, 25, 720, 576, FPS, "mpeg2", "ts", 42),
            "hevc": video_photographic(SPEC, FRAMES, WIDTH, HEIGHT, FPS, "hevc", "mp4", 43),
        }
        site.streams = {name: _stream(ds) for name, ds in videos.items()}
        site.series.update(ct=SPEC.series_uid, pdf=report.SeriesInstanceUID, damaged=broken.SeriesInstanceUID)
        site.series.update({name: ds.SeriesInstanceUID for name, ds in videos.items()})
        site.series.update({f"{name}-sop": ds.SOPInstanceUID for name, ds in videos.items()})
        stow(site.base, [*ct_series(SPEC), report, broken, *videos.values()], site.admin_headers())
        yield site


@pytest.fixture(scope="module")
def desk(site: DocSite, browser: Browser) -> Iterator[BrowserContext]:
    """A reading station's browser, signed in once as a radiologist for the module's tests."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    login(ctx.new_page(), site, "rad")
    yield ctx
    ctx.close()


def _viewer(desk: BrowserContext, site: DocSite) -> Page:
    """A new tab with the study open in the viewer (its CT shown)."""
    page = desk.new_page()
    open_viewer(page, site, SPEC.study_uid, f"?series={site.series['ct']}")
    return page


def _stream(ds: Any) -> bytes:
    from pydicom.encaps import generate_fragments

    return b"".join(generate_fragments(ds.PixelData))


def _show(page: Page, site: DocSite, series: str) -> Any:
    """Open the study and put ``series`` in the viewport; its document pane."""
    page.click(f".thumb[data-series='{site.series[series]}']")
    return page.locator(".cell .doc").first


def _settle(doc: Any, states: str = "ready|error|unsupported") -> str:
    expect(doc).to_have_attribute("data-state", re.compile(f"^({states})$"), timeout=20000)
    return str(doc.get_attribute("data-state"))


def _download(page: Page, selector: str) -> tuple[str, bytes]:
    """What a click on the download link ``selector`` saves: (file name, bytes)."""
    with page.expect_download() as info:
        page.click(selector)
    download = info.value
    return download.suggested_filename, Path(download.path()).read_bytes()


# -- PDF ------------------------------------------------------------------------------


def _page_pixels(page: Page, shots: Path, name: str, number: int = 1) -> np.ndarray:
    """The pixels of page ``number``'s canvas as drawn (grey levels; kept as name.png)."""
    locator = page.locator(f".pdf-page[data-page='{number}']")
    expect(locator).to_have_attribute("data-state", "drawn", timeout=15000)
    url = locator.locator("canvas").evaluate("c => c.toDataURL('image/png')")
    data = base64.b64decode(url.split(",", 1)[1])
    (shots / f"{name}.png").write_bytes(data)
    (SHOTS / f"{name}.png").write_bytes(data)
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)


def _check_report_page(pixels: np.ndarray) -> None:
    """The drawn page shows report_pages' content: a white page, the solid black band
    (72..540 x 132..192 pt from the top of a 612 x 792 pt page), a title and text lines."""
    h, w = pixels.shape
    assert abs(h / w - 792 / 612) < 0.02, pixels.shape
    band = pixels[int(h * 0.175) : int(h * 0.235), int(w * 0.13) : int(w * 0.87)]
    assert band.mean() < 30, band.mean()
    blank = pixels[int(h * 0.60) : int(h * 0.90), int(w * 0.05) : int(w * 0.95)]
    assert blank.mean() > 250, blank.mean()
    title = pixels[int(h * 0.08) : int(h * 0.13), int(w * 0.10) : int(w * 0.60)]
    assert (title < 100).mean() > 0.03, (title < 100).mean()  # glyphs, not an empty box
    lines = pixels[int(h * 0.29) : int(h * 0.55), int(w * 0.10) : int(w * 0.80)]
    assert 0.02 < (lines < 128).mean() < 0.4, (lines < 128).mean()
    assert (pixels > 240).mean() > 0.7


def test_pdf_is_drawn_by_pdfjs_with_pages_and_zoom(site: DocSite, desk: BrowserContext, shots: Path) -> None:
    page = desk.new_page()
    requested: list[str] = []
    console: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.on("console", lambda m: console.append(m.text))
    open_viewer(page, site, SPEC.study_uid, f"?series={site.series['ct']}")
    # pdf.js is not part of the viewer's first image: its chunk and worker come with the first PDF.
    assert not [u for u in requested if "pdfview" in u or "pdf.worker" in u]
    doc = _show(page, site, "pdf")
    assert _settle(doc) == "ready"
    assert [u for u in requested if "/assets/pdfview-" in u] and [u for u in requested if "pdf.worker" in u]
    assert page.locator(".cell .doc object, .cell .doc embed, .cell .doc iframe").count() == 0
    # pdf.js runs in its worker, within the Content Security Policy (no eval, no blocked fetch).
    assert not [m for m in console if "fake worker" in m or "Content Security Policy" in m], console
    expect(page.locator(".pdf-pageno")).to_have_text(f"page 1 of {PAGES}")
    assert page.locator(".pdf-page").count() == PAGES
    pixels = _page_pixels(page, shots, "pdf-page1")
    _check_report_page(pixels)
    shot(page, shots, "pdf-viewer")
    # Fit to width: the page fills the pane's width (less its margins).
    scroller = page.locator(".pdf-scroll")
    width = scroller.evaluate("e => e.clientWidth")
    first = page.locator(".pdf-page[data-page='1']").bounding_box()
    assert abs(first["width"] - (width - 20)) <= 2, (first, width)
    # Only the pages on or near the screen are drawn.
    assert page.locator(".pdf-page[data-page='3'][data-state='drawn']").count() == 0
    # Scrolled to the end: the last page is drawn and counted.
    scroller.evaluate("e => e.scrollTo(0, e.scrollHeight)")
    expect(page.locator(".pdf-pageno")).to_have_text(f"page {PAGES} of {PAGES}")
    _check_report_page(_page_pixels(page, shots, "pdf-page3", PAGES))
    # Zoom in: pages grow by the step, drawn again sharper, and the pane scrolls sideways.
    canvas_before = page.locator(".pdf-page[data-page='3'] canvas").evaluate("c => c.width")
    page.click("button[data-zoom='in']")
    page.wait_for_function(
        "() => document.querySelector(\".pdf-page[data-page='3'] canvas\")?.width > " + str(canvas_before)
    )
    zoomed = page.locator(".pdf-page[data-page='1']").bounding_box()
    assert abs(zoomed["width"] / first["width"] - 1.25) < 0.02, (zoomed, first)
    assert scroller.evaluate("e => e.scrollWidth > e.clientWidth")
    shot(page, shots, "pdf-zoomed")
    page.click("button[data-zoom='out']")
    page.click("button[data-zoom='out']")
    smaller = page.locator(".pdf-page[data-page='1']").bounding_box()
    assert abs(smaller["width"] / first["width"] - 0.8) < 0.02
    page.click("button[data-zoom='fit']")
    assert abs(page.locator(".pdf-page[data-page='1']").bounding_box()["width"] - first["width"]) <= 1
    # Open in a new tab / Download: the document's exact bytes (less the DICOM padding).
    name, data = _download(page, ".doc.pdf a[download]")
    assert name == "Discharge letter.pdf"
    assert data == site.pdf + (b"\0" if len(site.pdf) % 2 else b"")
    href = page.locator(".doc.pdf a[download]").get_attribute("href")
    assert href and href.startswith("blob:")
    assert page.locator(".doc.pdf a[target='_blank']").get_attribute("href") == href


def test_damaged_pdf_says_so_and_can_still_be_downloaded(
    site: DocSite, desk: BrowserContext, shots: Path
) -> None:
    page = _viewer(desk, site)
    doc = _show(page, site, "damaged")
    assert _settle(doc) == "error"
    message = page.locator(".doc.pdf .doc-error")
    expect(message).to_contain_text("This PDF document cannot be shown")
    expect(message).to_contain_text("damaged")
    assert page.locator(".pdf-page").count() == 0
    name, data = _download(page, ".doc.pdf a[download]")
    assert name == "Scanned form.pdf" and data == site.damaged + (b"\0" if len(site.damaged) % 2 else b"")
    pixels = shot(page, shots, "pdf-damaged", doc)
    assert pixels.std() > 10  # the message is on screen, not a blank pane


def test_pdf_on_a_phone(site: DocSite, browser: Browser, shots: Path) -> None:
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True, device_scale_factor=2
    )
    try:
        page = phone.new_page()
        login(page, site, "rad")
        open_viewer(page, site, SPEC.study_uid, f"?series={site.series['ct']}")
        page.click("button.panel-toggle")
        page.wait_for_timeout(300)
        doc = _show(page, site, "pdf")
        assert _settle(doc) == "ready"
        expect(page.locator(".pdf-pageno")).to_have_text(f"page 1 of {PAGES}")
        pixels = _page_pixels(page, shots, "phone-pdf-page1")
        _check_report_page(pixels)
        shot(page, shots, "phone-pdf")
        # The page fits the phone's width; the bar's controls and links stay on screen.
        box = page.locator(".pdf-page[data-page='1']").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        for selector in ("button[data-zoom='in']", ".doc.pdf a[download]", ".doc.pdf a[target='_blank']"):
            item = page.locator(selector).bounding_box()
            assert item and item["x"] >= 0 and item["x"] + item["width"] <= 390, (selector, item)
        # A canvas drawn for the phone's pixel density (2x), not blurred up.
        ratio = page.locator(".pdf-page[data-page='1'] canvas").evaluate(
            "c => c.width / c.getBoundingClientRect().width"
        )
        assert ratio > 1.9, ratio
    finally:
        phone.close()


# -- video ----------------------------------------------------------------------------
FRAME_STATS = """async ([time]) => {
  const video = document.querySelector('.cell .doc video');
  video.pause();
  await new Promise((resolve) => {
    video.addEventListener('seeked', resolve, { once: true });
    video.currentTime = time;
  });
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(video, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let r = 0, g = 0, b = 0, sx = 0, n = 0, grey = 0, grey2 = 0;
  for (let i = 0, p = 0; i < data.length; i += 4, p++) {
    r += data[i]; g += data[i + 1]; b += data[i + 2];
    const y = (data[i] + data[i + 1] + data[i + 2]) / 3; grey += y; grey2 += y * y;
    if (data[i] > 180 && data[i + 1] > 150 && data[i + 2] < 110) { sx += p % canvas.width; n++; }
  }
  const count = data.length / 4;
  return { width: canvas.width, height: canvas.height, r: r / count, g: g / count, b: b / count,
           std: Math.sqrt(grey2 / count - (grey / count) ** 2), discX: n ? sx / n : -1, discPixels: n };
}"""


def _expected(frame: int) -> dict[str, float]:
    rgb = video_frames(FRAMES, WIDTH, HEIGHT)[frame].astype(np.float64)
    disc = (rgb[..., 0] > 180) & (rgb[..., 1] > 150) & (rgb[..., 2] < 110)
    return {
        "r": rgb[..., 0].mean(),
        "g": rgb[..., 1].mean(),
        "b": rgb[..., 2].mean(),
        "std": rgb.mean(axis=2).std(),
        "discX": float(np.nonzero(disc)[1].mean()),
        "discPixels": float(disc.sum()),
    }


def _check_video_plays(page: Page, name: str, shots: Path) -> None:
    video = page.locator(".cell .doc video")
    assert video.evaluate("v => v.readyState") >= 2
    assert video.evaluate("v => [v.videoWidth, v.videoHeight]") == [WIDTH, HEIGHT]
    assert abs(video.evaluate("v => v.duration") - FRAMES / FPS) < 0.1
    # It plays: time goes on.
    video.evaluate("v => v.play()")
    page.wait_for_function(
        "() => document.querySelector('.cell .doc video').currentTime > 0.4", timeout=10000
    )
    pixels = shot(page, shots, f"video-{name}-playing", video)
    assert pixels.mean() > 40 and pixels.std() > 15, (pixels.mean(), pixels.std())
    # Frames drawn into a canvas in the page show the synthetic clip: its colours, its
    # contrast, and the disc moving left to right (frames 12 and 37 at 0.5 s and 1.5 s).
    for time, frame in ((0.5, 12), (1.5, 37)):
        got = page.evaluate(FRAME_STATS, [time + 0.02])
        want = _expected(frame)
        assert (got["width"], got["height"]) == (WIDTH, HEIGHT)
        for key in ("r", "g", "b"):
            assert abs(got[key] - want[key]) < 8, (name, time, key, got, want)
        assert abs(got["std"] - want["std"]) < 8, (name, time, got, want)
        assert abs(got["discX"] - want["discX"]) < 8, (name, time, got, want)
        assert abs(got["discPixels"] - want["discPixels"]) < 0.15 * want["discPixels"], (got, want)
    shot(page, shots, f"video-{name}")


def test_h264_video_plays(site: DocSite, desk: BrowserContext, shots: Path) -> None:
    page = _viewer(desk, site)
    doc = _show(page, site, "h264")
    assert page.evaluate(
        """() => document.createElement('video').canPlayType('video/mp4; codecs="avc1.640029"')"""
    )
    assert _settle(doc) == "ready"
    assert doc.get_attribute("data-container") == "mp4"
    expect(doc.locator(".video-facts")).to_contain_text(
        "H.264 High Profile / Level 4.1 · MP4 · 320×240 · 50 frames · 25 fps"
    )
    # The player got exactly the MPEG-4 stream of the Pixel Data (no item tags, no frames).
    name, data = _download(page, ".doc.video a[download]")
    assert data == site.streams["h264"] and data[4:8] == b"ftyp"
    assert name.endswith(".mp4")
    _check_video_plays(page, "h264", shots)


def test_h264_in_a_transport_stream_plays(site: DocSite, desk: BrowserContext, shots: Path) -> None:
    page = _viewer(desk, site)
    doc = _show(page, site, "h264-ts")
    supported = page.evaluate("""() => MediaSource.isTypeSupported('video/mp2t; codecs="avc1.640029"')""")
    state = _settle(doc)
    assert doc.get_attribute("data-container") == "mpeg-ts"
    if not supported:  # Chromium builds without the MPEG-2 TS parser
        assert state == "unsupported"
        return
    assert state == "ready"
    _check_video_plays(page, "h264-ts", shots)


@pytest.mark.parametrize("name", ["mpeg2", "hevc"])
def test_video_the_browser_cannot_play_says_so(
    site: DocSite, desk: BrowserContext, shots: Path, name: str
) -> None:
    page = _viewer(desk, site)
    doc = _show(page, site, name)
    playable = page.evaluate(
        """() => !!document.createElement('video').canPlayType('video/mp4; codecs="hvc1.1.6.L153.B0"')"""
    )
    state = _settle(doc)
    if name == "hevc" and playable:  # a browser with an HEVC decoder
        assert state == "ready"
        return
    assert state == "unsupported"
    assert page.locator(".cell .doc video").count() == 0
    message = doc.locator(".doc-error")
    expect(message).to_contain_text("This browser cannot play this video")
    expect(message).to_contain_text(
        "MPEG-2 Main Profile / Main Level" if name == "mpeg2" else "HEVC/H.265 Main Profile"
    )
    expect(message).to_contain_text("Download")
    file_name, data = _download(page, ".doc.video a[download]")
    assert data == site.streams[name]
    assert file_name.endswith(".ts" if name == "mpeg2" else ".mp4")
    pixels = shot(page, shots, f"video-{name}-unsupported", doc)
    assert pixels.std() > 10


# -- the server's side ------------------------------------------------------------------


def test_video_bulk_data_is_the_stream(site: DocSite) -> None:
    """WADO-RS bulk data and frames of a video's Pixel Data: the whole stream (all
    fragments, no item tags) in one part, as stored; it cannot be decoded to frames (406)."""
    headers = {"Authorization": f"Bearer {site.token('rad')}"}
    for name, media, syntax in (
        ("h264", "video/mp4", "1.2.840.10008.1.2.4.102"),
        ("mpeg2", "video/mpeg", "1.2.840.10008.1.2.4.100"),
        ("hevc", "video/mp4", "1.2.840.10008.1.2.4.107"),
    ):
        url = (
            f"{site.base}/dicomweb/studies/{SPEC.study_uid}/series/{site.series[name]}"
            f"/instances/{site.series[name + '-sop']}/bulkdata/7FE00010"
        )
        accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
        reply = httpx.get(url, headers={**headers, "Accept": accept}, timeout=30)
        assert reply.status_code == 200, reply.text
        boundary = re.search(r"boundary=([^;]+)", reply.headers["content-type"]).group(1)
        parts = reply.content.split(b"--" + boundary.encode())
        assert len(parts) == 3 and parts[2].startswith(b"--"), len(parts)  # preamble, one part, end
        head, body = parts[1].split(b"\r\n\r\n", 1)
        assert f"Content-Type: {media}; transfer-syntax={syntax}".encode() in head
        assert body.removesuffix(b"\r\n") == site.streams[name]
        single = httpx.get(url, headers={**headers, "Accept": media}, timeout=30)
        assert single.status_code == 200 and single.content == site.streams[name]
        assert single.headers["content-type"] == f"{media}; transfer-syntax={syntax}"
        decoded = httpx.get(
            url, headers={**headers, "Accept": 'multipart/related; type="application/octet-stream"'}
        )
        assert decoded.status_code == 406
        # Frames of a video: any of them is the whole stream (no frame can be cut out of it).
        frames = url.replace("/bulkdata/7FE00010", "/frames/2")
        reply = httpx.get(frames, headers={**headers, "Accept": media}, timeout=30)
        assert reply.status_code == 200 and reply.content == site.streams[name], reply.text[:200]
        refused = httpx.get(frames, headers={**headers, "Accept": "image/jpeg"}, timeout=30)
        assert refused.status_code == 406
        assert refused.headers["content-type"].startswith("application/problem+json")
        missing = httpx.get(url.replace("/bulkdata/7FE00010", "/frames/999"), headers=headers, timeout=30)
        assert missing.status_code == 404
