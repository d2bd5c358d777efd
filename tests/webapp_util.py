"""Shared pieces of the web application's end-to-end tests (tests/test_webapp*.py).

A real `hilum serve` with authentication on and the usual users (`site_server`),
Debian's Chromium driven by Playwright (the `browser`, `context` and `shots`
fixtures, registered for every test by tests/conftest.py), and the small actions
and pixel helpers the tests share: sign in, open the viewer, drag, screenshots as
grey-level arrays kept as artifacts (under the test's tmp dir and /tmp/hilum-shots).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from PIL import Image

from auth_util import PASSWORD, base_url, start_secure_server, token
from conftest import REPO, RunningServer, stop_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM = "/usr/bin/chromium"
DIST = REPO / "web" / "dist"
SHOTS = Path("/tmp/hilum-shots")
# For the web app's test modules: skip (with the reason) where the browser or the build is missing.
WEBAPP_MARKS = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
    pytest.mark.skipif(not (DIST / "index.html").exists(), reason="web app not built (scripts/build-web.sh)"),
]
# Users every site has: two radiologists and two referring physicians (each linked to
# the studies naming them as ReferringPhysicianName).
USERS = (
    ("rad", "radiologist", ""),
    ("rad2", "radiologist", ""),
    ("house", "referring", "HOUSE^GREGORY"),
    ("wilson", "referring", "WILSON^JAMES"),
)


class Site:
    """A running secure server, its first administrator's password and its users."""

    def __init__(self, server: RunningServer, admin_password: str) -> None:
        self.server = server
        self.base = base_url(server)
        self.admin_password = admin_password
        self.series: dict[str, str] = {}

    def token(self, user: str, password: str = PASSWORD) -> str:
        return token(self.base, user, password)

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token('admin', self.admin_password)}"}


@contextmanager
def site_server(tmp: Path) -> Iterator[Site]:
    """A secure server with the users of USERS (password PASSWORD); stopped on exit."""
    server, admin_password = start_secure_server(tmp)
    try:
        site = Site(server, admin_password)
        # Through the administrators' API: a CLI process per user costs seconds on a busy machine.
        headers = site.admin_headers()
        for user, role, person in USERS:
            reply = httpx.post(
                f"{site.base}/api/v1/users",
                json={"username": user, "role": role, "password": PASSWORD, "person_name": person},
                headers=headers,
                timeout=60,
            )
            assert reply.status_code == 201, reply.text
        yield site
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--headless",
                "--disable-gpu",
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                "--disable-dev-shm-usage",
            ],
        )
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    yield ctx
    ctx.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    SHOTS.mkdir(exist_ok=True)
    return tmp_path


def shot(page: Page, folder: Path, name: str, element: Any = None) -> np.ndarray:
    """Screenshot (page or element) saved as an artifact; its pixels as a grey-level array."""
    data = (element or page).screenshot()
    (folder / f"{name}.png").write_bytes(data)
    (SHOTS / f"{name}.png").write_bytes(data)
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)


def login(page: Page, site: Site, user: str, password: str = PASSWORD) -> None:
    page.goto(f"{site.base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/studies.*"))


def open_viewer(page: Page, site: Site, study: str, query: str = "") -> None:
    page.goto(f"{site.base}/viewer/{study}{query}")
    page.wait_for_function(
        "() => window.hilumProbe && window.hilumProbe.marks.some(m => m.first)", timeout=30000
    )
    page.wait_for_timeout(300)


def centre(pixels: np.ndarray, frac: float = 0.6) -> np.ndarray:
    """The middle of a viewport screenshot, away from the corner overlays."""
    h, w = pixels.shape
    dh, dw = int(h * (1 - frac) / 2), int(w * (1 - frac) / 2)
    return pixels[dh : h - dh, dw : w - dw]


def cell(page: Page, index: int = 0) -> Any:
    return page.locator(f".grid .cell[data-index='{index}'] .vp")


def drag(page: Page, start: tuple[float, float], end: tuple[float, float], button: str = "left") -> None:
    page.mouse.move(*start)
    page.mouse.down(button=button)  # type: ignore[arg-type]
    for k in range(1, 11):
        page.mouse.move(start[0] + (end[0] - start[0]) * k / 10, start[1] + (end[1] - start[1]) * k / 10)
    page.mouse.up(button=button)  # type: ignore[arg-type]
    page.wait_for_timeout(250)


def box_centre(locator: Any) -> tuple[float, float]:
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
