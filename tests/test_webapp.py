"""The web application end to end: a real `hilum serve` with authentication on, loaded
with test studies, driven in headless Chromium (Debian's, through Playwright).

What a radiologist does: sign in, search, open a CT next to its prior, see a real image
(checked by pixel statistics of the screen, not by the DOM), window it, zoom, pan,
rotate, measure a length on an image of known pixel spacing, save it, find it again
after a reload and as another user; MPR; a phone; compressed studies; reports, PDF and
a cine clip. Screenshots are kept under the test's tmp dir (and /tmp/hilum-shots).
"""


from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from auth_util import PASSWORD
from webapp_util import (
    SHOTS,
    WEBAPP_MARKS,
    Site,
    box_centre,
    cell,
    centre,
    drag,
    login,
    open_viewer,
    shot,
    site_server,
)
from webdata import (
    CtSpec,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    compressed,
    ct_series,
    multiframe_us,
    pdf_document,
    sr_document,
    stow,
)

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, BrowserContext, expect

pytestmark = WEBAPP_MARKS


class Studies:
    """What the site holds: a CT with its prior (patient WEB001, referred by HOUSE) and
    another patient's CT (referred by WILSON)."""

    current = CtSpec(slices=24)
    prior = CtSpec(
        study_date="20230105",
        study_time="081500",
        accession="WACC000",
        description="CT CHEST PRIOR",
        slices=16,
    )
    other = CtSpec(
        patient_id="WEB002",
        patient_name="OTHER^OTTO",
        accession="WACC900",
        referring="WILSON^JAMES",
        description="CT ABDOMEN",
        slices=4,
    )


class WebSite(Site):
    current, prior, other = Studies.current, Studies.prior, Studies.other


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebSite]:
    with site_server(tmp_path_factory.mktemp("webapp")) as plain:
        site = WebSite(plain.server, plain.admin_password)
        auth = site.admin_headers()
        current = ct_series(site.current)
        site.series["ct"] = site.current.series_uid
        j2k, jls, rle = (
            compressed(current[10:13], s) for s in (JPEG2000Lossless, JPEGLSLossless, RLELossless)
        )
        site.series.update(
            j2k=j2k[0].SeriesInstanceUID, jls=jls[0].SeriesInstanceUID, rle=rle[0].SeriesInstanceUID
        )
        report, pdf, clip = sr_document(site.current), pdf_document(site.current), multiframe_us(site.current)
        site.series.update(sr=report.SeriesInstanceUID, pdf=pdf.SeriesInstanceUID, us=clip.SeriesInstanceUID)
        stow(site.base, [*current, *j2k, *jls, *rle, report, pdf, clip], auth)
        stow(site.base, ct_series(site.prior), auth)
        stow(site.base, ct_series(site.other), auth)
        yield site


# -- serving the app ------------------------------------------------------------------


def test_app_is_served_publicly_without_shadowing_the_apis(site: WebSite) -> None:
    with httpx.Client(base_url=site.base) as client:
        index = client.get("/")
        assert index.status_code == 200 and "text/html" in index.headers["content-type"]
        assert 'id="app"' in index.text and index.headers["cache-control"] == "no-cache"
        assert "frame-ancestors 'none'" in index.headers["content-security-policy"]
        for route in ("/studies", f"/viewer/{site.current.study_uid}", "/s/some-token", "/login"):
            fallback = client.get(route)
            assert fallback.status_code == 200 and fallback.text == index.text, route
        asset = re.search(r'src="(/assets/[^"]+\.js)"', index.text)
        assert asset
        script = client.get(asset.group(1))
        assert script.status_code == 200 and "immutable" in script.headers["cache-control"]
        assert client.get("/assets/missing-0123456789.js").status_code == 404
        # The APIs keep their own answers: 401 without credentials, 404/405 problems.
        assert client.get("/dicomweb/studies").status_code == 401
        assert client.get("/api/v1/studies").status_code == 401
        missing = client.get("/api/v1/no-such-thing")
        assert missing.status_code in (401, 404)
        assert missing.headers["content-type"].startswith("application/problem+json")


def test_without_a_build_the_root_says_so(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from hilum.web.spa import SpaMiddleware

    async def api(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = TestClient(SpaMiddleware(api, dist=tmp_path / "missing"))
    page = client.get("/")
    assert page.status_code == 503 and "not built" in page.text and "npm run build" in page.text
    assert client.get("/api/v1/health").status_code == 204  # never answered by the app
    assert client.get("/dicomweb").status_code == 204


# -- sign in, search ------------------------------------------------------------------


def test_login_search_sort_and_logout(site: WebSite, context: BrowserContext, shots: Path) -> None:
    page = context.new_page()
    page.goto(f"{site.base}/studies")
    page.wait_for_url(re.compile(r".*/login\?next=.*"))
    page.fill("input[name=username]", "rad")
    page.fill("input[name=password]", "wrong password!")
    page.click("button[type=submit]")
    page.wait_for_selector(".form-error:has-text('Sign-in failed')")
    shot(page, shots, "login-error")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/studies.*"))
    rows = page.locator("table.studies tbody tr")
    rows.first.wait_for()
    assert rows.count() == 3
    shot(page, shots, "browser")
    # Default order: newest study first; sorting by date ascending puts the prior first.
    expect(rows.first).to_contain_text("2024-06-10")
    page.click("th.col-date button")
    expect(rows.first).to_contain_text("2023-01-05")
    # Search by patient name (prefix, case-insensitive) narrows to the patient's studies.
    page.fill("input[name=PatientName]", "tester")
    expect(rows).to_have_count(2)
    assert "PatientName=tester" in page.url
    page.fill("input[name=PatientName]", "")
    page.select_option("select[name=modality]", "US")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("US")
    page.select_option("select[name=modality]", "")
    expect(rows).to_have_count(3)
    page.fill("input[name=AccessionNumber]", "WACC900")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("OTHER")
    page.fill("input[name=AccessionNumber]", "")
    expect(rows).to_have_count(3)
    page.select_option("select[name=date]", "custom")
    page.fill("input[name=from]", "2023-01-01")
    page.fill("input[name=to]", "2023-12-31")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("2023-01-05")
    # The patient's timeline lists current and prior.
    rows.first.click()
    page.wait_for_selector(".timeline-list li >> nth=1")
    assert page.locator(".timeline-list li").count() == 2
    shot(page, shots, "browser-timeline")
    page.click("button.logout")
    page.wait_for_url(re.compile(r".*/login.*"))
    page.goto(f"{site.base}/studies")
    page.wait_for_url(re.compile(r".*/login.*"))


def test_referring_physician_sees_only_own_studies_and_gets_a_clear_refusal(
    site: WebSite, context: BrowserContext, shots: Path
) -> None:
    page = context.new_page()
    login(page, site, "wilson")
    expect(page.locator("table.studies tbody tr")).to_have_count(1)
    page.goto(f"{site.base}/viewer/{site.current.study_uid}")
    page.wait_for_selector("text=This study does not exist, or you are not allowed to see it")
    shot(page, shots, "viewer-forbidden")


# -- the viewer -----------------------------------------------------------------------


def test_ct_shows_a_real_image_and_wl_zoom_pan_rotate_change_it(
    site: WebSite, context: BrowserContext, shots: Path
) -> None:
    page = context.new_page()
    login(page, site, "rad")
    open_viewer(page, site, site.current.study_uid)
    # Current and prior hang side by side.
    assert page.locator(".grid .cell").count() == 2
    page.wait_for_selector(".grid .cell[data-index='1'] .overlay.tl .prior-tag")
    shot(page, shots, "viewer-current-prior")
    # Scrolling the current scrolls the prior with it (synchronized by position).
    page.click(".grid .cell[data-index='0']")
    prior_before = page.evaluate("() => window.hilumViewer.currentIndex(1)")
    for _ in range(4):
        page.keyboard.press("ArrowDown")
    page.wait_for_function(f"() => window.hilumViewer.currentIndex(1) !== {prior_before}")
    # ... and windowing it windows the prior.
    page.keyboard.press("2")
    expect(page.locator(".grid .cell[data-index='1'] .overlay.br")).to_contain_text("W 1500 L -600")
    # Layouts: 2x2 fills four viewports with the study's series.
    page.select_option("select[aria-label=Layout]", "2x2")
    expect(page.locator(".grid .cell")).to_have_count(4)
    page.wait_for_function("() => window.hilumViewer.cells.filter(c => c.set).length === 4")
    page.wait_for_function("() => window.hilumProbe.marks.filter(m => m.first).length >= 4")
    page.wait_for_timeout(500)
    shot(page, shots, "viewer-2x2")
    page.select_option("select[aria-label=Layout]", "1x2")
    expect(page.locator(".grid .cell")).to_have_count(2)
    page.wait_for_function("() => window.hilumViewer.currentIndex(0) >= 0")
    page.click(".grid .cell[data-index='0']")
    page.keyboard.press("End")
    page.keyboard.press("PageUp")  # a slice through the lungs
    page.wait_for_function("() => window.hilumViewer.currentIndex(0) === 13")
    page.wait_for_timeout(400)
    before = shot(page, shots, "ct-default-window", cell(page))
    middle = centre(before)
    # A real CT slice: body (soft tissue grey) on a black background, lungs dark, bone bright.
    assert middle.std() > 25, middle.std()
    assert 20 < middle.mean() < 200
    assert (before < 10).mean() > 0.15  # air around the body
    assert (middle > 200).mean() > 0.001  # vertebra / contrast
    # W/L drag (left button, the default tool) changes the pixels.
    c = box_centre(cell(page))
    drag(page, c, (c[0] + 120, c[1] + 80))
    windowed = shot(page, shots, "ct-after-wl-drag", cell(page))
    assert np.abs(centre(windowed) - middle).mean() > 5
    # Lung preset (key 2): lungs become visible grey instead of black.
    page.keyboard.press("2")
    page.wait_for_timeout(300)
    lung = shot(page, shots, "ct-lung-window", cell(page))
    assert page.locator(".grid .cell[data-index='0'] .overlay.br").inner_text().startswith("W 1500 L -600")
    page.keyboard.press("Escape")  # reset
    page.wait_for_timeout(300)
    reset = shot(page, shots, "ct-reset", cell(page))
    assert np.abs(reset - before).mean() < 3
    assert np.abs(lung - before).mean() > 5
    # Zoom with the right button: the body fills more of the viewport.
    drag(page, c, (c[0], c[1] + 150), button="right")
    zoomed = shot(page, shots, "ct-zoomed", cell(page))
    assert (zoomed < 10).mean() < (before < 10).mean() - 0.05
    page.keyboard.press("Escape")
    # Pan with the middle button moves the image.
    drag(page, c, (c[0] + 150, c[1]), button="middle")
    panned = shot(page, shots, "ct-panned", cell(page))
    assert np.abs(panned - before).mean() > 5
    page.keyboard.press("Escape")
    # Rotate 90°: the phantom is wider than tall, rotated it is taller than wide.
    page.keyboard.press("r")
    page.wait_for_timeout(300)
    rotated = shot(page, shots, "ct-rotated", cell(page))

    def extent(img: np.ndarray) -> tuple[int, int]:
        h = img.shape[0]
        w = img.shape[1]
        # Clear of the corner texts and the orientation letters at the edges.
        mask = img[int(h * 0.1) : int(h * 0.9), int(w * 0.06) : int(w * 0.94)] > 30
        ys, xs = np.nonzero(mask)
        return int(xs.max() - xs.min()), int(ys.max() - ys.min())

    (w0, h0), (w1, h1) = extent(before), extent(rotated)
    assert w0 > h0 and h1 > w1, (w0, h0, w1, h1)
    # Orientation letters follow the view: rotated 90° right, the patient's right is on top.
    orient = page.locator(".grid .cell[data-index='0']")

    def letters() -> list[str]:
        return [orient.locator(f".orient.{side}").inner_text() for side in ("left", "right", "top", "bottom")]

    assert letters() == ["P", "A", "R", "L"]
    # Invert and flip.
    page.keyboard.press("Escape")
    page.wait_for_timeout(200)
    assert letters() == ["R", "L", "A", "P"]  # axial: the patient's right on the screen's left
    page.keyboard.press("i")
    page.wait_for_timeout(300)
    inverted = centre(shot(page, shots, "ct-inverted", cell(page)))
    assert np.corrcoef(inverted.ravel(), middle.ravel())[0, 1] < -0.9
    page.keyboard.press("Escape")
    page.keyboard.press("h")
    page.wait_for_timeout(300)
    flipped = centre(shot(page, shots, "ct-flipped", cell(page)))
    assert np.abs(flipped - np.fliplr(middle)).mean() < np.abs(flipped - middle).mean()
    assert orient.locator(".orient.left").inner_text() == "L"
    # Arrow keys scroll the stack.
    page.keyboard.press("Escape")
    index = page.evaluate("() => window.hilumViewer.currentIndex(0)")
    page.keyboard.press("ArrowUp")
    page.wait_for_timeout(200)
    assert page.evaluate("() => window.hilumViewer.currentIndex(0)") == index - 1
    # The tag browser shows the instance's attributes.
    page.keyboard.press("Control+i")
    page.wait_for_selector(".tags-table td.kw:has-text('PixelSpacing')")
    page.keyboard.press("Escape")


def test_length_measurement_is_right_saved_restored_and_shared(
    site: WebSite, browser: Browser, context: BrowserContext, shots: Path
) -> None:
    page = context.new_page()
    login(page, site, "rad")
    open_viewer(page, site, site.current.study_uid, f"?series={site.current.series_uid}")
    assert page.locator(".grid .cell").count() == 1
    page.keyboard.press("l")  # length tool
    # 100 pixels along a row at 0.5 mm per pixel: 50 mm.
    start = page.evaluate("() => window.hilumViewer.imageToPage(0, 60, 128)")
    end = page.evaluate("() => window.hilumViewer.imageToPage(0, 160, 128)")
    drag(page, tuple(start), tuple(end))
    measured = page.evaluate("() => window.hilumViewer.measurements.collect()")
    assert len(measured) == 1 and measured[0]["kind"] == "length"
    length = measured[0]["values"][0]
    assert length["unit"] == "mm" and abs(length["value"] - 50.0) < 0.6, length
    # Stored in DICOM's SCOORD convention ((0,0) the top left corner of the top left pixel),
    # as the image coordinates the line was drawn at: no half-pixel shift.
    assert np.allclose(measured[0]["points"], [[60, 128], [160, 128]], atol=0.25), measured[0]["points"]
    page.wait_for_selector("svg text:has-text('mm')")
    shot(page, shots, "measure-length", cell(page))
    assert page.locator("svg text").filter(has_text=re.compile(r"^(49\.|50\.)\d* mm$")).count() >= 1
    page.keyboard.press("Control+s")
    page.wait_for_selector("#toast:has-text('Saved 1 measurement')")
    # Stored as a DICOM SR in the study (TID 1500), valid for dciodvfy.
    token = site.token("rad")
    saved = httpx.get(
        f"{site.base}/api/v1/studies/{site.current.study_uid}/annotations",
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert saved["saved_by"] == "rad" and len(saved["measurements"]) == 1
    _check_sr_with_dciodvfy(site, token, saved, shots)
    # A reload restores it.
    page.reload()
    page.wait_for_function("() => window.hilumViewer?.measurements?.collect().length === 1")
    restored = page.evaluate("() => window.hilumViewer.measurements.collect()")[0]
    assert np.allclose(restored["points"], measured[0]["points"], atol=0.01)
    page.wait_for_selector("svg text:has-text('mm')")
    shot(page, shots, "measure-after-reload", cell(page))
    # Another radiologist and the referring physician of the study see it too...
    for user in ("rad2", "house"):
        other = browser.new_context(viewport={"width": 1200, "height": 800})
        try:
            p2 = other.new_page()
            login(p2, site, user)
            open_viewer(p2, site, site.current.study_uid, f"?series={site.current.series_uid}")
            p2.wait_for_function("() => window.hilumViewer?.measurements?.collect().length === 1")
            if user == "house":  # read-only role: no saving
                assert not p2.locator("button:has-text('Save')").is_visible()
        finally:
            other.close()
    # ...and someone not allowed to see the study gets neither study nor measurements.
    wilson = httpx.get(
        f"{site.base}/api/v1/studies/{site.current.study_uid}/annotations",
        headers={"Authorization": f"Bearer {site.token('wilson')}"},
    )
    assert wilson.status_code == 404
    refused = httpx.post(
        f"{site.base}/api/v1/studies/{site.current.study_uid}/annotations",
        json={"measurements": []},
        headers={"Authorization": f"Bearer {site.token('house')}"},
    )
    assert refused.status_code == 403
    # An arrow with its text is saved and comes back with it.
    page.keyboard.press("x")
    start = page.evaluate("() => window.hilumViewer.imageToPage(0, 100, 100)")
    end = page.evaluate("() => window.hilumViewer.imageToPage(0, 140, 140)")
    drag(page, tuple(start), tuple(end))
    page.fill(".dialog input", "nodule")
    page.keyboard.press("Enter")
    page.keyboard.press("Control+s")
    page.wait_for_selector("#toast:has-text('Saved 2 measurements')")
    page.reload()
    page.wait_for_function("() => window.hilumViewer?.measurements?.collect().length === 2")
    kinds = {m["kind"]: m for m in page.evaluate("() => window.hilumViewer.measurements.collect()")}
    assert kinds["arrow"]["label"] == "nodule" and kinds["length"]["values"][0]["unit"] == "mm"
    page.wait_for_selector("svg text:has-text('nodule')")
    shot(page, shots, "measure-arrow-restored", cell(page))


def _check_sr_with_dciodvfy(site: WebSite, token: str, saved: dict[str, Any], folder: Path) -> None:
    url = (
        f"{site.base}/dicomweb/studies/{site.current.study_uid}/series/{saved['series_instance_uid']}"
        f"/instances/{saved['sop_instance_uid']}"
    )
    reply = httpx.get(
        url,
        headers={"Authorization": f"Bearer {token}", "Accept": 'multipart/related; type="application/dicom"'},
    )
    assert reply.status_code == 200
    boundary = re.search(r"boundary=\"?([^\";]+)", reply.headers["content-type"]).group(1)  # type: ignore[union-attr]
    part = reply.content.split(f"--{boundary}".encode())[1]
    body = part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    path = folder / "measurements-sr.dcm"
    path.write_bytes(body)
    tool = shutil.which("dciodvfy", path="/usr/local/bin:/usr/bin:/bin")
    if tool is None:
        pytest.fail("dciodvfy is not installed (scripts/test.sh installs dicom3tools)")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert "Comprehensive3DSR" in output
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert not errors, output


def test_mpr_shows_three_orientations(site: WebSite, context: BrowserContext, shots: Path) -> None:
    page = context.new_page()
    login(page, site, "rad")
    open_viewer(page, site, site.current.study_uid, f"?series={site.current.series_uid}")
    page.keyboard.press("m")
    page.wait_for_selector(".grid .cell[data-plane='coronal']")
    page.wait_for_function("() => window.hilumMpr && window.hilumMpr.viewports().length === 3")
    page.wait_for_timeout(2500)
    page.evaluate("() => document.getElementById('toast')?.remove()")
    shot(page, shots, "mpr")
    extents = {}
    for plane in ("axial", "sagittal", "coronal"):
        shot(page, shots, f"mpr-{plane}", page.locator(f".grid .cell[data-plane='{plane}'] .vp"))
        rgb = np.asarray(Image.open(SHOTS / f"mpr-{plane}.png").convert("RGB"), dtype=np.float32)
        # Grey image pixels, not the coloured crosshair lines.
        mask = centre(rgb.min(axis=2), 0.9) > 40
        assert mask.mean() > 0.02, plane
        ys, xs = np.nonzero(mask)
        extents[plane] = (xs.max() - xs.min()) / max(1, ys.max() - ys.min())
    # Axial: the body is wider than tall. Sagittal and coronal: the 24 slices x 2 mm are
    # 48 mm high against 128 mm across, so the reconstruction is much flatter.
    assert extents["sagittal"] > extents["axial"] * 1.3, extents
    assert extents["coronal"] > extents["axial"] * 1.3, extents
    page.keyboard.press("m")
    page.wait_for_selector(".grid .cell[data-index='0']")


def test_compressed_series_display_identically(site: WebSite, context: BrowserContext, shots: Path) -> None:
    page = context.new_page()
    login(page, site, "rad")
    images = {}
    for name in ("j2k", "jls", "rle"):
        open_viewer(page, site, site.current.study_uid, f"?series={site.series[name]}")
        page.wait_for_function("() => window.hilumProbe.marks.every(m => m.loaded !== undefined)")
        # The series came in one request, split into frames in the browser (bulk.ts):
        # all but the first frame, fetched on its own to be shown at once.
        mark = page.evaluate("() => window.hilumProbe.marks[0]")
        assert mark["failed"] == 0 and mark["streamed"] >= mark["frames"] - 1, mark
        images[name] = shot(page, shots, f"compressed-{name}", cell(page))
        assert centre(images[name]).std() > 25, name
    # Lossless: the same pixels, whatever the transfer syntax.
    assert np.abs(images["j2k"] - images["jls"]).mean() < 1
    assert np.abs(images["j2k"] - images["rle"]).mean() < 1


def test_report_pdf_and_cine_clip(site: WebSite, context: BrowserContext, shots: Path) -> None:
    page = context.new_page()
    login(page, site, "rad")
    open_viewer(page, site, site.current.study_uid, f"?series={site.series['us']}")
    page.keyboard.press("c")  # cine
    first = page.evaluate("() => window.hilumViewer.currentIndex(0)")
    page.wait_for_function(f"() => window.hilumViewer.currentIndex(0) !== {first}", timeout=10000)
    page.keyboard.press("c")
    shot(page, shots, "cine-us", cell(page))
    # Drag the report into the viewport: readable text.
    page.drag_and_drop(f".thumb[data-series='{site.series['sr']}']", ".grid .cell[data-index='0']")
    page.wait_for_selector(".cell .doc.sr, .cell article.sr")
    assert "No acute findings." in page.locator(".cell article.sr").inner_text()
    shot(page, shots, "sr-text")
    page.click(f".thumb[data-series='{site.series['pdf']}']")
    page.wait_for_selector(".cell .doc.pdf[data-state='ready'] .pdf-page canvas")  # drawn by pdf.js
    shot(page, shots, "pdf")


def test_phone_layout_and_touch_scroll(site: WebSite, browser: Browser, shots: Path) -> None:
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True, device_scale_factor=2
    )
    try:
        page = phone.new_page()
        login(page, site, "rad")
        page.locator("table.studies tbody tr").first.wait_for()
        shot(page, shots, "phone-browser")
        open_viewer(page, site, site.current.study_uid, f"?series={site.current.series_uid}")
        # The series panel is collapsed off screen, with a button to open it.
        panel = page.locator(".series-panel").bounding_box()
        assert panel["x"] + panel["width"] <= 1
        assert page.locator("button.panel-toggle").is_visible()
        shot(page, shots, "phone-viewer")
        page.click("button.panel-toggle")
        page.wait_for_timeout(400)
        assert page.locator(".series-panel").bounding_box()["x"] >= -1
        shot(page, shots, "phone-series-open")
        page.click("button.panel-toggle")
        page.wait_for_timeout(400)
        # One-finger swipe scrolls the stack (the scroll tool is the touch default).
        before = page.evaluate("() => window.hilumViewer.currentIndex(0)")
        x, y = box_centre(cell(page))
        cdp = phone.new_cdp_session(page)
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y - 100}]})
        for k in range(1, 16):
            cdp.send(
                "Input.dispatchTouchEvent",
                {"type": "touchMove", "touchPoints": [{"x": x, "y": y - 100 + k * 14}]},
            )
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        page.wait_for_timeout(400)
        after = page.evaluate("() => window.hilumViewer.currentIndex(0)")
        assert after != before, (before, after)
        shot(page, shots, "phone-after-swipe")
        # Pinch (two fingers moving apart) zooms in.
        zoom = page.evaluate("() => window.hilumViewer.stackViewport().getZoom()")
        cdp.send(
            "Input.dispatchTouchEvent",
            {
                "type": "touchStart",
                "touchPoints": [{"x": x - 30, "y": y, "id": 1}, {"x": x + 30, "y": y, "id": 2}],
            },
        )
        for k in range(1, 11):
            cdp.send(
                "Input.dispatchTouchEvent",
                {
                    "type": "touchMove",
                    "touchPoints": [
                        {"x": x - 30 - 8 * k, "y": y, "id": 1},
                        {"x": x + 30 + 8 * k, "y": y, "id": 2},
                    ],
                },
            )
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        page.wait_for_timeout(400)
        zoomed = page.evaluate("() => window.hilumViewer.stackViewport().getZoom()")
        assert zoomed > zoom * 1.1, (zoom, zoomed)
        shot(page, shots, "phone-after-pinch")
    finally:
        phone.close()


def test_share_link_opens_the_study_without_an_account(site: WebSite, browser: Browser, shots: Path) -> None:
    created = httpx.post(
        f"{site.base}/api/v1/shares",
        json={"study_uids": [site.current.study_uid], "pin": "2468", "expires_in_hours": 1},
        headers={"Authorization": f"Bearer {site.token('rad')}"},
    )
    if created.status_code == 403 and "switched off" in created.text:
        pytest.skip("share links are switched off in this configuration")
    assert created.status_code == 201, created.text
    url = created.json()["url"]
    guest = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        page = guest.new_page()
        page.goto(f"{site.base}{url}")
        page.wait_for_selector("input[aria-label=PIN]")
        page.fill("input[aria-label=PIN]", "1111")
        page.click("button[type=submit]")
        page.wait_for_selector(".form-error:has-text('wrong PIN')")
        shot(page, shots, "share-pin")
        page.fill("input[aria-label=PIN]", "2468")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(rf".*/viewer/{re.escape(site.current.study_uid)}.*"))
        page.wait_for_function("() => window.hilumProbe && window.hilumProbe.marks.some(m => m.first)")
        assert centre(shot(page, shots, "share-viewer", cell(page))).std() > 25
        # No study list for a guest, and nothing else of the archive.
        assert not page.locator("a:has-text('Studies')").is_visible()
        other = page.evaluate(
            "async (uid) => (await fetch(`/dicomweb/studies/${uid}/series`)).status", site.other.study_uid
        )
        assert other in (401, 403, 404)
    finally:
        guest.close()


def test_roi_statistics_are_in_hounsfield_units(site: WebSite, context: BrowserContext, shots: Path) -> None:
    page = context.new_page()
    login(page, site, "rad")
    open_viewer(page, site, site.current.study_uid, f"?series={site.current.series_uid}")
    page.evaluate("() => window.hilumViewer.stackViewport().setImageIdIndex(12)")
    page.wait_for_function("() => window.hilumViewer.currentIndex(0) === 12")
    page.wait_for_timeout(300)
    # The phantom's right lung is at about (84, 122) on a 256 matrix: -1000 + 1040 - 860 = -820 HU.
    page.keyboard.press("e")
    a = page.evaluate("() => window.hilumViewer.imageToPage(0, 78, 114)")
    b = page.evaluate("() => window.hilumViewer.imageToPage(0, 92, 130)")
    drag(page, tuple(a), tuple(b))
    page.keyboard.press("o")  # probe in the aorta (contrast: -1000 + 1040 + 160 = 200 HU)
    probe = page.evaluate("() => window.hilumViewer.imageToPage(0, 122, 136)")
    page.mouse.click(*probe)
    page.wait_for_function(
        "() => ['ellipse', 'probe'].every(k => window.hilumViewer.measurements.collect()"
        ".some(m => m.kind === k && m.values.length))"
    )
    measured = {m["kind"]: m for m in page.evaluate("() => window.hilumViewer.measurements.collect()")}
    shot(page, shots, "measure-roi-probe", cell(page))
    values = {v["name"]: v for v in measured["ellipse"]["values"]}
    assert values["Mean"]["unit"] == "[hnsf'U]" and -850 < values["Mean"]["value"] < -790, values
    assert 2 < values["Standard deviation"]["value"] < 20, values
    assert values["Area"]["unit"] == "mm2" and 20 < values["Area"]["value"] < 250, values
    (probe_value,) = measured["probe"]["values"]
    assert probe_value["unit"] == "[hnsf'U]" and 150 < probe_value["value"] < 250, probe_value


def test_sso_button_and_unreachable_server_messages(
    site: WebSite, context: BrowserContext, shots: Path
) -> None:
    page = context.new_page()
    # The SSO button appears with the label the server gives (GET /auth/providers).
    page.route(
        "**/api/v1/auth/providers",
        lambda route: route.fulfill(
            json={
                "password": True,
                "oidc": {"enabled": True, "label": "Hospital login", "login_url": "/api/v1/auth/oidc/login"},
            }
        ),
    )
    page.goto(f"{site.base}/login?next=/studies%3FPatientID%3DWEB001")
    button = page.locator("a.sso-button")
    expect(button).to_have_text("Hospital login")
    assert button.get_attribute("href") == "/api/v1/auth/oidc/login?next=%2Fstudies%3FPatientID%3DWEB001"
    shot(page, shots, "login-sso")
    # A server that cannot be reached is said so, not shown as an empty list.
    login(page, site, "rad")
    page.route("**/api/v1/studies?*", lambda route: route.abort())
    page.fill("input[name=PatientName]", "x")
    expect(page.locator(".status.error")).to_contain_text("Server unreachable")
    page.route("**/dicomweb/studies?*", lambda route: route.abort())
    page.goto(f"{site.base}/viewer/{site.current.study_uid}")
    expect(page.locator(".center-message.error")).to_contain_text("Server unreachable")
    shot(page, shots, "viewer-unreachable")
