"""Association control: the calling AE allow-list and the called AE title check.

A server started with HILUM_DICOM__ALLOWED_CALLING_AE_TITLES='["GOODSCU"]'
must reject every other calling AE title (A-ASSOCIATE-RJ, rejected-permanent,
service-user, "calling AE title not recognized") and a wrong called AE title
("called AE title not recognized"), for C-ECHO and C-STORE alike, leaving the
index and storage untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.sop_class import Verification

from conftest import RunningServer, start_server, stop_server
from dimse_util import dcmtk, scp_args, scu_ae, snapshot, wait_for
from factory import StudySpec, write_study
from hilum.audit import store
from hilum.config import Settings
from hilum.index.database import make_engine

CALLING_AE_NOT_RECOGNIZED = 0x03
CALLED_AE_NOT_RECOGNIZED = 0x07


@pytest.fixture
def guarded_server(settings: Settings, tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(
        settings, tmp_path, env={"HILUM_DICOM__ALLOWED_CALLING_AE_TITLES": '["GOODSCU"]'}
    )
    try:
        yield running
    finally:
        stop_server(running)
    # the receiving processes shut down cleanly (no traceback at SIGTERM)
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


def _pynetdicom_echo(server: RunningServer, calling: str, called: str) -> tuple[str, tuple[int, ...]]:
    ae = scu_ae(calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=called)
    if assoc.is_established:
        status = assoc.send_c_echo()
        assoc.release()
        return f"established, C-ECHO 0x{int(status.Status):04X}", ()
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return "rejected", (rj.result, rj.result_source, rj.diagnostic)
    return "aborted", ()


def test_calling_ae_allow_list_and_called_ae_check(
    guarded_server: RunningServer, tmp_path: Path
) -> None:
    server = guarded_server
    host_port = ["127.0.0.1", str(server.port)]

    # -- DCMTK echoscu ------------------------------------------------------------------
    good = dcmtk("echoscu", "-aet", "GOODSCU", "-aec", server.ae_title, *host_port)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = dcmtk("echoscu", "-aet", "BADSCU", "-aec", server.ae_title, *host_port)
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    wrong_called = dcmtk("echoscu", "-aet", "GOODSCU", "-aec", "NOTHILUM", *host_port)
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr

    # -- pynetdicom: the exact A-ASSOCIATE-RJ fields ------------------------------------------
    assert _pynetdicom_echo(server, "GOODSCU", server.ae_title) == ("established, C-ECHO 0x0000", ())
    assert _pynetdicom_echo(server, "BADSCU", server.ae_title) == (
        "rejected", (0x01, 0x01, CALLING_AE_NOT_RECOGNIZED)
    )
    assert _pynetdicom_echo(server, "GOODSCU", "NOTHILUM") == (
        "rejected", (0x01, 0x01, CALLED_AE_NOT_RECOGNIZED)
    )
    # AE titles are compared without their space padding (PS3.5 6.2), case-sensitively
    assert _pynetdicom_echo(server, "GOODSCU   ", server.ae_title)[0].startswith("established")
    assert _pynetdicom_echo(server, "goodscu", server.ae_title)[0] == "rejected"

    # -- C-STORE from an unknown calling AE stores nothing ------------------------------------
    files = write_study(StudySpec(patient_id="PAT-SEC", slices=2), tmp_path / "in")
    before = snapshot(server.settings)
    refused = dcmtk("storescu", "-aet", "BADSCU", *scp_args(server), *map(str, files))
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    after = snapshot(server.settings)
    assert after == before and after.rows["instances"] == 0 and not after.staging
    accepted = dcmtk("storescu", "-aet", "GOODSCU", *scp_args(server), *map(str, files))
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert snapshot(server.settings).rows["instances"] == 2

    # -- Hilum's own SCU (AE title HILUM) is not on the list either -------------------------------
    echo = server.hilum("echo", f"{server.ae_title}@127.0.0.1:{server.port}", check=False)
    assert echo.returncode == 1
    assert "rejected" in echo.stdout + echo.stderr

    # -- every such rejection is in the audit trail: Security Alert, node authentication --------
    def alerts() -> list[dict[str, Any]]:
        engine = make_engine(server.settings.index_url, pool_size=1)
        try:
            return store.search(engine, store.AuditFilter(event="Security Alert"), limit=1000)
        finally:
            engine.dispose()

    def found(calling: str, text: str) -> list[dict[str, Any]]:
        return [r for r in alerts() if r["user_id"] == calling and text in r["xml"]]

    # DCMTK and pynetdicom above: GOODSCU calling NOTHILUM twice, BADSCU three times
    [wrong_called, *_] = wait_for(lambda: found("GOODSCU", "called AE title 'NOTHILUM' is not"),
                                  20, "the wrong called AE title's audit record")
    assert "110126" in wrong_called["xml"] and wrong_called["source_ip"] == "127.0.0.1"
    wait_for(lambda: found("BADSCU", "not in dicom.allowed_calling_ae_titles"),
             20, "the refused calling AE title's audit record")
    assert "called AE title 'NOTHILUM' is not 'HILUM'" in server.log.read_text()
