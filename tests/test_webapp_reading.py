"""Reading status in the web app, end to end: a radiologist starts reading a study in the
viewer and marks it read, then finds it (or not) with the study browser's status filter;
another radiologist's claim shows as a clear conflict with an offer to take over; roles
without the permission get no control. Opening a study changes nothing by itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from webapp_util import WEBAPP_MARKS, Site, login, open_viewer, shot, site_server
from webdata import CtSpec, ct_series, stow

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, BrowserContext, Page, expect

pytestmark = WEBAPP_MARKS

FIRST = CtSpec(patient_id="RDG001", patient_name="READING^FIRST", accession="RACC1", slices=3, size=128)
SECOND = CtSpec(patient_id="RDG002", patient_name="READING^SECOND", accession="RACC2", study_date="20240611",
                slices=3, size=128)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with site_server(tmp_path_factory.mktemp("webapp-reading")) as site:
        auth = site.admin_headers()
        for spec in (FIRST, SECOND):
            stow(site.base, ct_series(spec), auth)
        yield site


def _api_status(site: Site, uid: str) -> dict[str, object]:
    reply = httpx.get(f"{site.base}/api/v1/studies/{uid}/reading",
                      headers={"Authorization": f"Bearer {site.token('rad2')}"})
    assert reply.status_code == 200, reply.text
    body: dict[str, object] = reply.json()
    return body


def _claim(site: Site, uid: str, user: str, status: str = "in_progress") -> None:
    reply = httpx.put(f"{site.base}/api/v1/studies/{uid}/reading", json={"status": status},
                      headers={"Authorization": f"Bearer {site.token(user)}"})
    assert reply.status_code == 200, reply.text


def _choose(page: Page, action: str, force: bool = False) -> None:
    page.click(".toolbar button.reading-button")
    page.click(f".reading-dialog button[data-action={action}][data-force={'true' if force else 'false'}]")


def test_mark_read_in_the_viewer_then_filter_the_list(
    site: Site, context: BrowserContext, shots: Path
) -> None:
    page = context.new_page()
    login(page, site, "rad")
    open_viewer(page, site, FIRST.study_uid)
    button = page.locator(".toolbar button.reading-button")
    expect(button).to_have_attribute("data-status", "unread")
    assert _api_status(site, FIRST.study_uid)["reading_status"] == "unread"  # opening changed nothing

    _choose(page, "in_progress")
    expect(button).to_have_attribute("data-status", "in_progress")
    expect(button).to_contain_text("In progress · rad")
    shot(page, shots, "reading-in-progress")
    _choose(page, "read")
    expect(button).to_have_attribute("data-status", "read")
    expect(button).to_contain_text("Read · rad")
    assert _api_status(site, FIRST.study_uid)["reading_user"] == "rad"

    page.goto(f"{site.base}/studies")
    rows = page.locator("table.studies tbody tr")
    expect(rows).to_have_count(2)
    page.select_option("select[name=reading]", "read")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-study", FIRST.study_uid)
    expect(rows.first.locator(".reading-badge")).to_have_text("Read · rad")
    assert "reading=read" in page.url
    shot(page, shots, "reading-filter-read")
    page.select_option("select[name=reading]", "unread")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-study", SECOND.study_uid)
    expect(rows.first.locator(".reading-badge")).to_have_text("Unread")
    page.select_option("select[name=reading]", "unread,in_progress")
    expect(rows).to_have_count(1)
    page.select_option("select[name=reading]", "")
    expect(rows).to_have_count(2)
    # The Status column sorts in workflow order (unread, in progress, read): descending first.
    page.click("th.col-status button")
    expect(rows.first).to_have_attribute("data-study", FIRST.study_uid)
    page.click("th.col-status button")
    expect(rows.first).to_have_attribute("data-study", SECOND.study_uid)


def test_another_radiologists_claim_is_a_clear_conflict(
    site: Site, context: BrowserContext, shots: Path
) -> None:
    page = context.new_page()
    login(page, site, "rad")
    open_viewer(page, site, SECOND.study_uid)
    button = page.locator(".toolbar button.reading-button")
    expect(button).to_have_attribute("data-status", "unread")
    page.click(".toolbar button.reading-button")
    start = page.locator(".reading-dialog button[data-action=in_progress]")
    expect(start).to_have_text("Start reading")
    _claim(site, SECOND.study_uid, "rad2")  # meanwhile, on another workstation
    start.click()
    dialog = page.locator(".reading-dialog")
    expect(dialog).to_contain_text("rad2 is reading this study")
    expect(button).to_contain_text("In progress · rad2")
    shot(page, shots, "reading-conflict")
    dialog.locator("button[data-force=true]").click()
    expect(dialog).to_have_count(0)
    expect(button).to_contain_text("In progress · rad")
    assert _api_status(site, SECOND.study_uid)["reading_user"] == "rad"
    _claim(site, SECOND.study_uid, "rad", "unread")


def test_no_control_without_the_permission_and_badges_on_a_phone(
    site: Site, browser: Browser, shots: Path
) -> None:
    _claim(site, FIRST.study_uid, "rad", "read")  # as the first test left it
    phone = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    try:
        page = phone.new_page()
        login(page, site, "house")  # a referring physician: sees the status, cannot set it
        rows = page.locator("table.studies tbody tr")
        expect(rows).to_have_count(2)
        page.select_option("select[name=reading]", "read")
        expect(rows).to_have_count(1)
        badge = rows.first.locator(".reading-badge")
        expect(badge).to_be_visible()
        expect(badge).to_have_text("Read · rad")
        shot(page, shots, "reading-phone")
        open_viewer(page, site, FIRST.study_uid)
        expect(page.locator(".toolbar")).to_be_visible()
        expect(page.locator(".toolbar button.reading-button")).to_have_count(0)
    finally:
        phone.close()
