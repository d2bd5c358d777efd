"""Presentation states (GSPS) and key images (KOS) in the viewer, end to end.

A 12-slice CT (with a thin bright cross in the air above the body of one slice), a
second small series, two Grayscale Softcopy Presentation States made with highdicom
(lung window, rotation 90° and horizontal flip, annotations in two layers; a zoomed
displayed area, inverse polarity and a Modality LUT of its own, lines on the cross)
and a Key Object Selection naming four images of both series, stored by STOW-RS; then
key images marked in the viewer and stored as a new Key Object Selection. What is on
screen is checked by screenshots, orientation letters and the viewport's state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from webapp_util import WEBAPP_MARKS, Site, cell, login, open_viewer, shot, site_server
from webdata import CtSpec, ct_series, stow

pytest.importorskip("playwright.sync_api")
hd = pytest.importorskip("highdicom")
from PIL import Image  # noqa: E402
from playwright.sync_api import BrowserContext, Page, expect  # noqa: E402

pytestmark = WEBAPP_MARKS

SPEC = CtSpec(
    patient_id="GSPS001",
    patient_name="PRESENTED^PAULA",
    accession="WACC300",
    description="CT CHEST FOLLOW-UP",
    slices=12,
)
SECOND = replace(SPEC, series_uid=generate_uid(), series_number=3, series_description="AXIAL 5.0", slices=4)
CROSS = 6  # index of the slice (InstanceNumber 7) with the bright cross
CROSS_COLUMN, CROSS_ROW = 100, 25  # 0-based pixel column of its vertical bar, row of its horizontal bar
LUNG = (-600.0, 1500.0)  # centre, width of the first state's window
GREEN = (0, 255, 0)
RED = (255, 0, 0)
# First state's polyline (DICOM image coordinates: (0,0) is the first pixel's top left corner).
POLYLINE = ((60.0, 100.0), (160.0, 100.0))
KEY_INSTANCES = (9, 3, 5)  # CT instance numbers named by the key object selection, in its order


def with_cross(image: Dataset) -> Dataset:
    """A 1-pixel-wide bright cross in the air above the body: a vertical bar on column
    CROSS_COLUMN (rows 10-40), a horizontal one on row CROSS_ROW (columns 85-115)."""
    pixels = np.frombuffer(image.PixelData, dtype=np.int16).reshape(image.Rows, image.Columns).copy()
    pixels[10:41, CROSS_COLUMN] = 3000
    pixels[CROSS_ROW, 85:116] = 3000
    image.PixelData = pixels.tobytes()
    return image


def presentation_states(ct: list[Dataset]) -> list[Dataset]:
    from highdicom.color import CIELabColor
    from highdicom.pr import (
        GraphicAnnotation,
        GraphicLayer,
        GraphicObject,
        GrayscaleSoftcopyPresentationState,
        SoftcopyVOILUTTransformation,
        TextObject,
    )

    common: dict[str, Any] = {
        "manufacturer": "HILUM TEST",
        "manufacturer_model_name": "tests",
        "software_versions": "1",
        "device_serial_number": "1",
        "institution_name": "Hilum Test Hospital",
    }
    series_uid = generate_uid()
    key = ct[CROSS]
    findings = GraphicLayer(
        "FINDINGS", order=1, description="Findings", display_color=CIELabColor.from_rgb(*GREEN)
    )
    notes = GraphicLayer("NOTES", order=2, description="Notes")  # no colour: the viewer's default
    lung = GrayscaleSoftcopyPresentationState(
        referenced_images=ct,
        series_instance_uid=series_uid,
        series_number=50,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        content_label="LUNG ROTATED",
        content_description="Lung window, turned",
        content_creator_name="RADIOLOGIST^RITA",
        graphic_layers=[findings, notes],
        graphic_annotations=[
            GraphicAnnotation(
                referenced_images=[key],
                graphic_layer=findings,
                graphic_objects=[
                    GraphicObject("POLYLINE", np.array(POLYLINE), "PIXEL"),
                    GraphicObject("CIRCLE", np.array([[128.0, 150.0], [148.0, 150.0]]), "PIXEL"),
                    GraphicObject(
                        "ELLIPSE",
                        np.array([[90.0, 190.0], [130.0, 190.0], [110.0, 180.0], [110.0, 200.0]]),
                        "PIXEL",
                    ),
                    GraphicObject("POINT", np.array([[200.0, 60.0]]), "PIXEL"),
                    GraphicObject(
                        "INTERPOLATED",
                        np.array([[40.0, 220.0], [60.0, 210.0], [80.0, 225.0], [100.0, 215.0]]),
                        "PIXEL",
                    ),
                ],
                text_objects=[
                    TextObject(
                        "RUL NODULE",
                        "PIXEL",
                        bounding_box=(60.0, 80.0, 160.0, 96.0),
                        text_justification="LEFT",
                    ),
                ],
            ),
            GraphicAnnotation(
                referenced_images=[key],
                graphic_layer=notes,
                text_objects=[
                    TextObject("SEEN", "DISPLAY", anchor_point=(0.1, 0.9), anchor_point_visible=False)
                ],
            ),
        ],
        voi_lut_transformations=[SoftcopyVOILUTTransformation(window_center=LUNG[0], window_width=LUNG[1])],
        **common,
    )
    lung.ImageRotation = 90
    lung.ImageHorizontalFlip = "Y"
    lung.PresentationCreationDate = "20240611"

    marks = GraphicLayer("MARKS", order=1, display_color=CIELabColor.from_rgb(*RED))
    x = CROSS_COLUMN + 0.5  # the centre of the bar's pixels
    y = CROSS_ROW + 0.5
    detail = GrayscaleSoftcopyPresentationState(
        referenced_images=[key],
        series_instance_uid=series_uid,
        series_number=50,
        sop_instance_uid=generate_uid(),
        instance_number=2,
        content_label="DETAIL",
        content_description="Cross, magnified",
        graphic_layers=[marks],
        graphic_annotations=[
            GraphicAnnotation(
                referenced_images=[key],
                graphic_layer=marks,
                graphic_objects=[
                    GraphicObject("POLYLINE", np.array([[x, 12.0], [x, 20.0]]), "PIXEL"),
                    GraphicObject("POLYLINE", np.array([[88.0, y], [96.0, y]]), "PIXEL"),
                ],
            ),
        ],
        # Pixel values (no rescale): centre 1324 width 600 is 300/600 in HU.
        modality_lut_transformation=hd.ModalityLUTTransformation(
            rescale_intercept=0.0, rescale_slope=1.0, rescale_type="US"
        ),
        voi_lut_transformations=[SoftcopyVOILUTTransformation(window_center=1324.0, window_width=600.0)],
        presentation_lut_transformation=hd.PresentationLUTTransformation(presentation_lut_shape="INVERSE"),
        **common,
    )
    area = detail.DisplayedAreaSelectionSequence[0]
    area.DisplayedAreaTopLeftHandCorner = [81, 6]  # columns 80-119, rows 5-44 (0-based)
    area.DisplayedAreaBottomRightHandCorner = [120, 45]
    # A rectangular shutter hiding columns 80-84 (0-based) of that area, in black.
    detail.ShutterShape = "RECTANGULAR"
    detail.ShutterLeftVerticalEdge, detail.ShutterRightVerticalEdge = 86, 256
    detail.ShutterUpperHorizontalEdge, detail.ShutterLowerHorizontalEdge = 1, 256
    detail.ShutterPresentationValue = 0
    detail.PresentationCreationDate = "20240612"
    return [lung, detail]


def key_objects(ct: list[Dataset], second: list[Dataset]) -> Dataset:
    from pydicom.sr.codedict import codes

    by_number = {int(ds.InstanceNumber): ds for ds in ct}
    chosen = [by_number[n] for n in KEY_INSTANCES] + [second[1]]
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest, referenced_objects=chosen, description="Nodules to follow"
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=chosen,
        content=content,
        series_instance_uid=generate_uid(),
        series_number=60,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="HILUM TEST",
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with site_server(tmp_path_factory.mktemp("gsps")) as site:
        ct = ct_series(SPEC)
        with_cross(ct[CROSS])
        second = ct_series(SECOND)
        states = presentation_states(ct)
        stow(site.base, [*ct, *second, *states, key_objects(ct, second)], site.admin_headers())
        site.series.update(ct=SPEC.series_uid, second=SECOND.series_uid)
        yield site


def rgb(page: Page, folder: Path, name: str, element: Any = None) -> np.ndarray:
    shot(page, folder, name, element)
    return np.asarray(Image.open(folder / f"{name}.png").convert("RGB"), dtype=np.int16)


def state(page: Page, index: int = 0) -> dict[str, Any]:
    return page.evaluate(f"() => window.hilumViewer.presentation({index})")


def markers(page: Page, index: int = 0) -> dict[str, str]:
    grid_cell = page.locator(f".grid .cell[data-index='{index}']")
    return {
        side: grid_cell.locator(f".orient.{side}").inner_text() for side in ("top", "bottom", "left", "right")
    }


def page_point(page: Page, x: float, y: float, index: int = 0) -> tuple[float, float]:
    """Page coordinates of a point in DICOM image coordinates (Cornerstone's are the same)."""
    point = page.evaluate(f"() => window.hilumViewer.imageToPage({index}, {x}, {y})")
    return point[0], point[1]


def svg_points(page: Page, selector: str) -> list[tuple[float, float]]:
    """The points of an SVG polyline of the presentation layer, in page coordinates."""
    return page.evaluate(
        """(selector) => {
            const line = document.querySelector(selector);
            const box = line.ownerSVGElement.getBoundingClientRect();
            return [...line.points].map((p) => [box.left + p.x, box.top + p.y]);
        }""",
        selector,
    )


def near(a: tuple[float, float], b: tuple[float, float], tolerance: float = 2.0) -> bool:
    return abs(a[0] - b[0]) <= tolerance and abs(a[1] - b[1]) <= tolerance


def colour_at(
    pixels: np.ndarray, point: tuple[float, float], colour: tuple[int, int, int], radius: int = 2
) -> bool:
    """Is `colour` (within 60 per channel) shown within `radius` pixels of a page point?"""
    x, y = round(point[0]), round(point[1])
    patch = pixels[y - radius : y + radius + 1, x - radius : x + radius + 1]
    return bool((np.abs(patch - np.array(colour)).max(axis=2) < 60).any())


def current_instance(page: Page, index: int = 0) -> int:
    return page.evaluate(
        f"() => window.hilumViewer.stackInstances({index})[window.hilumViewer.currentIndex({index})]"
    )


def go_to_instance(page: Page, number: int, index: int = 0) -> None:
    page.evaluate(
        f"""() => {{
            const v = window.hilumViewer;
            const to = v.stackInstances({index}).indexOf({number});
            return v.stackViewport(v.cells[{index}]).setImageIdIndex(to);
        }}"""
    )
    page.wait_for_function(
        f"() => window.hilumViewer.currentIndex({index}) === {index_of(page, number, index)}"
    )
    page.wait_for_timeout(250)


def index_of(page: Page, number: int, index: int = 0) -> int:
    return page.evaluate(f"() => window.hilumViewer.stackInstances({index}).indexOf({number})")


def choose(page: Page, label: str) -> None:
    page.click(f".ps-entry:has-text('PS: {label}')")
    page.wait_for_function(f"() => window.hilumViewer.presentation(0)?.label === {label!r}")
    page.wait_for_timeout(400)


DEFAULT_MARKERS = {"top": "A", "bottom": "P", "left": "R", "right": "L"}


def test_presentation_state_window_rotation_flip_and_annotations(
    site: Site, context: BrowserContext, shots: Path
) -> None:
    page = context.new_page()
    login(page, site, "rad")
    open_viewer(page, site, SPEC.study_uid)
    # The study's two presentation states are listed (not the PR series as such).
    expect(page.locator(".ps-entry")).to_have_count(2)
    entry = page.locator(".ps-entry:has-text('LUNG ROTATED')")
    expect(entry).to_contain_text("Lung window, turned")
    expect(entry).to_contain_text("RADIOLOGIST, RITA")
    expect(page.locator(".thumb:has-text('PR')")).to_have_count(0)
    go_to_instance(page, CROSS + 1)
    default = state(page)
    assert default["label"] is None and default["graphics"] == 0
    assert markers(page) == DEFAULT_MARKERS
    lung = page_point(page, 84.5, 121.5)  # the right lung's centre (-860 HU on soft tissue)
    before = rgb(page, shots, "gsps-default")
    assert before[round(lung[1]), round(lung[0])].mean() < 25  # black in the image's 400/40 window

    choose(page, "LUNG ROTATED")
    applied = state(page)
    # The state's window (PS3.3 C.11.2.1.2: lower = c - 0.5 - (w-1)/2) on the annotated image.
    assert applied["voiRange"] == {"lower": -1350, "upper": 149}
    assert applied["VOILUTFunction"] == "LINEAR" and applied["invert"] is False
    assert current_instance(page) == CROSS + 1
    badge = page.locator(".grid .cell[data-index='0'] .ps-badge select")
    expect(badge).to_have_value(applied["sop"])
    assert badge.evaluate("(s) => s.selectedOptions[0].textContent") == "PS: LUNG ROTATED"
    expect(page.locator(".grid .cell[data-index='0'] .overlay.br")).to_contain_text("W 1500 L -600")
    # Rotated 90 degrees clockwise, then flipped horizontally: the patient's right on top,
    # anterior on the left.
    assert markers(page) == {"top": "R", "bottom": "L", "left": "A", "right": "P"}
    pixels = rgb(page, shots, "gsps-lung")
    lung = page_point(page, 84.5, 121.5)
    assert 50 < pixels[round(lung[1]), round(lung[0])].mean() < 160  # grey in the lung window
    # The graphics: where the image's pixels are, in the layer's colour.
    start, end = page_point(page, *POLYLINE[0]), page_point(page, *POLYLINE[1])
    line = svg_points(page, ".ps-graphics polyline")
    assert near(line[0], start) and near(line[1], end), (line, start, end)
    assert abs(start[0] - end[0]) < 2 < abs(start[1] - end[1])  # a row of the image is vertical on screen
    middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
    assert colour_at(pixels, middle, GREEN), pixels[round(middle[1]), round(middle[0])]
    layer = page.locator(".ps-graphics g[data-layer='FINDINGS']")
    for kind in ("POLYLINE", "CIRCLE", "ELLIPSE", "POINT", "INTERPOLATED"):
        expect(layer.locator(f"[data-type='{kind}']")).to_have_count(1)
    text = layer.locator("text[data-text='RUL NODULE']")
    expect(text).to_have_attribute("fill", "#00ff00")
    box = text.bounding_box()
    assert box and colour_at(
        pixels, (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2), GREEN, radius=6
    )
    notes = page.locator(".ps-graphics g[data-layer='NOTES'] text[data-text='SEEN']")
    expect(notes).to_have_attribute("fill", "#ffd400")  # no colour in the state: the default
    # DISPLAY units: 10% from the left, 90% down the displayed area (the whole image here).
    corners = [page_point(page, x, y) for x, y in ((0, 0), (256, 0), (0, 256), (256, 256))]
    left, top = min(p[0] for p in corners), min(p[1] for p in corners)
    width, height = max(p[0] for p in corners) - left, max(p[1] for p in corners) - top
    anchor = (left + 0.1 * width, top + 0.9 * height)
    written = (float(notes.get_attribute("x") or 0), float(notes.get_attribute("y") or 0))
    svg_box = page.locator(".grid .cell[data-index='0'] .ps-graphics").bounding_box()
    assert svg_box and near((svg_box["x"] + written[0] - 6, svg_box["y"] + written[1] + 6), anchor)

    # The graphics follow zoom and pan.
    vp = cell(page).bounding_box()
    assert vp
    centre_ = (vp["x"] + vp["width"] / 2, vp["y"] + vp["height"] / 2)
    page.mouse.move(*centre_)
    page.mouse.down(button="right")
    page.mouse.move(centre_[0], centre_[1] - 120, steps=6)
    page.mouse.up(button="right")
    page.mouse.move(*centre_)
    page.mouse.down(button="middle")
    page.mouse.move(centre_[0] + 70, centre_[1] + 40, steps=6)
    page.mouse.up(button="middle")
    page.wait_for_timeout(400)
    assert abs(state(page)["parallelScale"] / applied["parallelScale"] - 1) > 0.1  # zoomed
    start, end = page_point(page, *POLYLINE[0]), page_point(page, *POLYLINE[1])
    line = svg_points(page, ".ps-graphics polyline")
    assert near(line[0], start) and near(line[1], end), (line, start, end)
    zoomed = rgb(page, shots, "gsps-lung-zoomed")
    assert colour_at(zoomed, ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2), GREEN)

    # Off: the viewer's defaults again; then on again from the cell's menu.
    badge.select_option("")
    page.wait_for_function("() => window.hilumViewer.presentation(0).label === null")
    page.wait_for_timeout(300)
    off = state(page)
    assert off["voiRange"] == default["voiRange"] and not off["flipHorizontal"] and off["rotation"] == 0
    assert off["graphics"] == 0 and markers(page) == DEFAULT_MARKERS
    lung = page_point(page, 84.5, 121.5)
    assert rgb(page, shots, "gsps-off")[round(lung[1]), round(lung[0])].mean() < 25
    badge.select_option(label="PS: LUNG ROTATED")
    page.wait_for_function("() => window.hilumViewer.presentation(0).label === 'LUNG ROTATED'")
    assert state(page)["voiRange"] == {"lower": -1350, "upper": 149}
    # Esc resets the view to the state's, not to the defaults.
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    assert markers(page) == {"top": "R", "bottom": "L", "left": "A", "right": "P"}
    # Another image of the state: the window stays, no graphics there.
    go_to_instance(page, 2)
    assert state(page)["voiRange"] == {"lower": -1350, "upper": 149}
    assert state(page)["graphics"] == 0


def test_displayed_area_polarity_modality_lut_and_pixel_exact_graphics(
    site: Site, context: BrowserContext, shots: Path
) -> None:
    page = context.new_page()
    login(page, site, "rad")
    open_viewer(page, site, SPEC.study_uid)
    choose(page, "DETAIL")
    applied = state(page)
    assert current_instance(page) == CROSS + 1
    # Its own Modality LUT (no rescale) and window 1324/600: HU 0 to 599 in the viewport.
    assert applied["voiRange"] == {"lower": 0, "upper": 599}
    assert applied["invert"] is True
    # Displayed area columns 80-119, rows 5-44 scaled to fit: its height fills the viewport.
    vp = cell(page).bounding_box()
    assert vp
    top_left, bottom_right = page_point(page, 80, 5), page_point(page, 120, 45)
    assert abs((bottom_right[1] - top_left[1]) - vp["height"]) < 2
    assert abs((top_left[0] + bottom_right[0]) / 2 - (vp["x"] + vp["width"] / 2)) < 2
    pixels = rgb(page, shots, "gsps-detail")
    air = page_point(page, 112, 8)
    assert pixels[round(air[1]), round(air[0])].mean() > 200  # air, inverted: white
    shutter = page_point(page, 82.5, 30)
    assert pixels[round(shutter[1]), round(shutter[0])].max() < 30  # behind the shutter: black
    edge = page_point(page, 85, 30)[0]  # the shutter's edge: black to its left, white to its right
    row = pixels[round(shutter[1])].mean(axis=1)
    assert row[round(edge) - 3] < 30 and row[round(edge) + 3] > 200
    scale = (bottom_right[1] - top_left[1]) / 40  # screen pixels per image pixel (~20)
    assert scale > 12

    def dark_run(values: np.ndarray, around: int) -> tuple[int, int]:
        """The run of dark (the bar, inverted) or red (the line on it) pixels nearest `around`."""
        dark = np.flatnonzero((values.max(axis=1) < 60) | (values[:, 1] < 60))
        runs = np.split(dark, np.flatnonzero(np.diff(dark) > 1) + 1)
        run = min(runs, key=lambda r: abs((r[0] + r[-1]) / 2 - around))
        return int(run[0]), int(run[-1])

    def red(values: np.ndarray) -> np.ndarray:
        return np.flatnonzero((values[:, 0] > 150) & (values[:, 1] < 90) & (values[:, 2] < 90))

    # The vertical bar (column 100) and the red line drawn at x = 100.5 across it: the line
    # runs down the bar's middle, as the bar is rendered (a half-pixel error is ~10 px here).
    x_line, y_probe = page_point(page, CROSS_COLUMN + 0.5, 16)
    row = pixels[round(y_probe)]
    bar = dark_run(row, round(x_line))
    reds = red(row)
    assert reds.size and abs(reds.mean() - (bar[0] + bar[1]) / 2) < 2, (reds, bar)
    assert abs(reds.mean() - x_line) < 2 and abs((bar[1] - bar[0] + 1) - scale) < 3, (bar, scale)
    # The same across the horizontal bar (row 25) and the line at y = 25.5.
    x_probe, y_line = page_point(page, 92, CROSS_ROW + 0.5)
    column = pixels[:, round(x_probe)]
    bar = dark_run(column, round(y_line))
    reds = red(column)
    assert reds.size and abs(reds.mean() - (bar[0] + bar[1]) / 2) < 2, (reds, bar)
    assert abs(reds.mean() - y_line) < 2


def test_key_images_display_set_and_marks(site: Site, context: BrowserContext, shots: Path) -> None:
    page = context.new_page()
    login(page, site, "rad")
    open_viewer(page, site, SPEC.study_uid)
    key = page.locator(".thumb[data-series^='ko:']")
    expect(key).to_have_count(1)
    expect(key).to_contain_text("Of Interest: Nodules to follow")
    expect(page.locator(".thumb:has-text('KO')")).to_have_count(0)
    key.click()
    page.wait_for_function("() => window.hilumViewer.stackInstances(0).length === 4")
    # Exactly the referenced images, in the document's order, from both series.
    assert page.evaluate("() => window.hilumViewer.stackInstances(0)") == [*KEY_INSTANCES, 2]
    page.wait_for_function("() => window.hilumViewer.currentIndex(0) === 0")
    overlay = page.locator(".grid .cell[data-index='0'] .overlay.bl")
    expect(overlay).to_contain_text(f"★ from S2 #{KEY_INSTANCES[0]}")
    expect(overlay).to_contain_text("Im 1 / 4")
    page.wait_for_timeout(300)
    first = shot(page, shots, "gsps-key-1", cell(page))
    assert first.std() > 20  # an image, not a blank viewport
    page.keyboard.press("End")
    expect(overlay).to_contain_text("★ from S3 #2")
    page.wait_for_timeout(300)
    assert shot(page, shots, "gsps-key-4", cell(page)).std() > 20
    # The series marks its key images.
    page.click(f".thumb[data-series='{SPEC.series_uid}']")
    page.wait_for_function("() => window.hilumViewer.stackInstances(0).length === 12")
    go_to_instance(page, KEY_INSTANCES[1])
    expect(overlay).to_contain_text("★ Key image (Of Interest)")
    go_to_instance(page, 4)
    expect(overlay).not_to_contain_text("★")
    # Dragged into a viewport like a series.
    page.select_option("select[aria-label='Layout']", "1x2")
    page.wait_for_selector(".grid .cell[data-index='1']")
    page.drag_and_drop(".thumb[data-series^='ko:']", ".grid .cell[data-index='1']")
    page.wait_for_function("() => window.hilumViewer.stackInstances(1).length === 4")
    expect(page.locator(".grid .cell[data-index='1'] .overlay.tr")).to_contain_text("Of Interest")


def test_marked_key_images_are_saved_as_a_key_object_selection(
    site: Site, context: BrowserContext, shots: Path
) -> None:
    page = context.new_page()
    login(page, site, "rad")
    open_viewer(page, site, SPEC.study_uid, f"?series={SPEC.series_uid}")
    overlay = page.locator(".grid .cell[data-index='0'] .overlay.bl")
    for number in (11, 12):
        go_to_instance(page, number)
        page.keyboard.press("k")
        expect(overlay).to_contain_text("☆ Marked, not saved")
    go_to_instance(page, 10)  # marked and unmarked: left out
    page.keyboard.press("k")
    page.keyboard.press("k")
    expect(overlay).not_to_contain_text("Marked")
    save = page.locator(".toolbar .key-save")
    expect(save).to_have_text("★ Store 2 key images")
    save.click()
    keys = page.locator(".thumb[data-series^='ko:']")
    expect(keys).to_have_count(2)
    expect(save).to_be_hidden()
    go_to_instance(page, 11)
    expect(overlay).to_contain_text("★ Key image (Of Interest)")
    keys.nth(1).click()
    page.wait_for_function("() => window.hilumViewer.stackInstances(0).length === 2")
    assert page.evaluate("() => window.hilumViewer.stackInstances(0)") == [11, 12]
    # In the archive: a KO document by the user, in the study's Hilum key images series.
    headers = {**site.admin_headers(), "Accept": "application/dicom+json"}
    found = httpx.get(f"{site.base}/dicomweb/studies/{SPEC.study_uid}/series?Modality=KO", headers=headers)
    hilum = [s for s in found.json() if s.get("0008103E", {}).get("Value") == ["Hilum key images"]]
    assert len(hilum) == 1
    series_uid = hilum[0]["0020000E"]["Value"][0]
    metadata = httpx.get(
        f"{site.base}/dicomweb/studies/{SPEC.study_uid}/series/{series_uid}/metadata", headers=headers
    ).json()
    assert len(metadata) == 1
    document = metadata[0]
    assert document["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.88.59"]
    assert document["0040A043"]["Value"][0]["00080104"]["Value"] == ["Of Interest"]
    names = [
        item["0040A123"]["Value"][0]["Alphabetic"]
        for item in document["0040A730"]["Value"]
        if "0040A123" in item
    ]
    assert [name.rstrip("^") for name in names] == ["rad"]  # the observer: who marked them
    shot(page, shots, "gsps-key-saved")
