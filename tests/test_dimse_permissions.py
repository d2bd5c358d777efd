"""Per-AE permissions and unknown AEs (dimse/access.py).

A known remote AE is an entry of the remote AE table whose AE title is the
Calling AE Title and whose host resolves to the peer's address (or is "*").
With ``dicom.accept_unknown_aes = false`` every other peer is rejected at
association (A-ASSOCIATE-RJ 1/1/3, calling AE title not recognized). A known AE
may use C-ECHO and the services its ``permissions`` name; any other C-STORE,
C-FIND, C-MOVE, C-GET (or Storage Commitment N-ACTION) gets 0124H Refused: Not
Authorized, and the service does not run: nothing stored, found or sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import text

from conftest import RunningServer, run_hilum, start_server, stop_server
from dimse_util import (
    chunked_send,
    dcmtk,
    dcmtk_storescp,
    identifier,
    scp_args,
    scu_ae,
    snapshot,
    wait_for,
)
from factory import StudySpec, write_study
from hilum.app import Services
from hilum.config import DicomSettings, RemoteAE, Settings
from hilum.dimse.access import NOT_AUTHORIZED, AccessControl
from hilum.index.database import make_engine
from hilum.index.nodes import RemoteNodes

CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


# -- the decision itself, without a network ------------------------------------------------
def _node(name: str, ae_title: str, host: str, *permissions: str) -> RemoteAE:
    return RemoteAE(
        name=name, ae_title=ae_title, host=host, port=104, permissions=list(permissions)
    )


def test_known_ae_is_its_title_from_its_host(services: Services) -> None:
    for node in (
        _node("storer", "STORESCU", "127.0.0.1", "store"),
        _node("finder", "FINDSCU", "localhost", "find"),  # resolved: 127.0.0.1 / ::1
        _node("anywhere", "ROAMING", "*", "move", "get"),
        _node("faraway", "FARSCU", "192.0.2.1", "store", "find", "move", "get"),
        _node("nowhere", "LOSTSCU", "no-such-host.invalid"),
        _node("echoonly", "ECHOSCU", "127.0.0.1"),
    ):
        services.nodes.add(node)
    access = AccessControl(services.nodes, accept_unknown_aes=False)

    storer = access.identify("STORESCU", "127.0.0.1")
    assert storer.known and storer.node is not None and storer.node.name == "storer"
    assert storer.may("store") and not storer.may("find")
    assert access.identify("FINDSCU", "127.0.0.1").permissions == {"find"}
    # a dual-stack listener reports IPv4 peers as IPv4-mapped IPv6 addresses
    assert access.identify("FINDSCU", "::ffff:127.0.0.1").known
    assert access.identify("ROAMING", "198.51.100.7").permissions == {"move", "get"}
    assert access.identify("ECHOSCU", "127.0.0.1").permissions == frozenset()
    # the title alone is not enough, nor the address alone
    for title, address in (
        ("FARSCU", "127.0.0.1"), ("LOSTSCU", "127.0.0.1"), ("NOBODY", "127.0.0.1"),
        ("storescu", "127.0.0.1"),  # AE titles are case-sensitive
    ):
        peer = access.identify(title, address)
        assert not peer.known and not access.admits(peer), (title, address)

    # accept_unknown_aes = true: unknown peers are admitted with every permission,
    # known ones keep their own
    lenient = AccessControl(services.nodes, accept_unknown_aes=True)
    unknown = lenient.identify("NOBODY", "10.0.0.1")
    assert lenient.admits(unknown) and unknown.permissions == {"store", "find", "move", "get"}
    assert lenient.identify("STORESCU  ", "127.0.0.1").permissions == {"store"}


def test_table_changes_apply_after_the_ttl(services: Services) -> None:
    access = AccessControl(services.nodes, accept_unknown_aes=False, ttl=0.3)
    assert not access.identify("LATESCU", "127.0.0.1").known
    services.nodes.add(_node("late", "LATESCU", "127.0.0.1", "find"))
    assert not access.identify("LATESCU", "127.0.0.1").known  # still the cached table
    time.sleep(0.35)
    assert access.identify("LATESCU", "127.0.0.1").permissions == {"find"}
    services.nodes.remove("late")
    time.sleep(0.35)
    assert not access.identify("LATESCU", "127.0.0.1").known


def test_permissions_are_kept_in_the_index(services: Services) -> None:
    services.nodes.add(_node("some", "SOME", "127.0.0.1", "get", "store", "get"))
    services.nodes.add(RemoteAE(name="tls", ae_title="TLSAE", host="h", port=2762, tls=True))
    services.nodes.add(_node("none", "NONE", "127.0.0.1"))
    nodes = {n.name: n for n in services.nodes.all()}
    assert nodes["some"].permissions == ["store", "get"] and not nodes["some"].tls
    assert nodes["tls"].permissions == ["store", "find", "move", "get"] and nodes["tls"].tls
    assert nodes["none"].permissions == []
    # rows written before permissions existed (migration 0005) have all four, no TLS
    with services.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO remote_aes (name, ae_title, host, port, description) "
            "VALUES ('old', 'OLDAE', '127.0.0.1', 104, '')"
        ))
    old = services.nodes.get("old")
    assert old.permissions == ["store", "find", "move", "get"] and not old.tls


def test_permission_and_tls_settings_are_validated() -> None:
    assert RemoteAE(
        name="x", ae_title="X", host="h", port=1, permissions=["find", "store", "find"]
    ).permissions == ["store", "find"]
    with pytest.raises(ValidationError, match="permissions"):
        RemoteAE(name="x", ae_title="X", host="h", port=1, permissions=["delete"])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="tls_port needs tls_certificate"):
        DicomSettings(tls_port=2762)
    with pytest.raises(ValidationError, match="set together"):
        DicomSettings(tls_certificate="cert.pem")
    with pytest.raises(ValidationError, match="needs tls_ca_certificates"):
        DicomSettings(
            tls_port=2762, tls_certificate="c", tls_private_key="k",
            tls_require_client_certificate=True,
        )
    with pytest.raises(ValidationError, match="must differ"):
        DicomSettings(port=2762, tls_port=2762, tls_certificate="c", tls_private_key="k")
    assert DicomSettings().accept_unknown_aes is False  # secure by default: known AEs only


def test_ae_add_permissions_on_the_command_line(settings: Settings) -> None:
    added = run_hilum(
        settings, "ae", "add", "ct", "CT1", "192.0.2.5", "104", "--permissions", "find, store",
        "--tls",
    )
    assert "may use: echo, store, find" in added.stdout and "(TLS)" in added.stdout
    run_hilum(settings, "ae", "add", "mon", "MON", "192.0.2.6", "104", "--permissions", "")
    run_hilum(settings, "ae", "add", "all", "ALL", "192.0.2.7", "104")
    engine = make_engine(settings.index_url, pool_size=1)
    try:
        nodes = {node.name: node for node in RemoteNodes(engine).all()}
    finally:
        engine.dispose()
    assert nodes["ct"].permissions == ["store", "find"] and nodes["ct"].tls
    assert nodes["mon"].permissions == [] and not nodes["mon"].tls
    assert nodes["all"].permissions == ["store", "find", "move", "get"]
    bad = run_hilum(
        settings, "ae", "add", "bad", "BAD", "h", "104", "--permissions", "delete", check=False
    )
    assert bad.returncode == 1 and "invalid remote AE" in bad.stderr, bad.stderr


# -- a real server: only known AEs, each with its own permissions ------------------------
def _remote(name: str, ae_title: str, host: str, port: int, permissions: list[str]) -> dict[str, Any]:
    return {"name": name, "ae_title": ae_title, "host": host, "port": port,
            "permissions": permissions}


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[Any]:
    with dcmtk_storescp(tmp_path / "dest", "DESTSCP", "+xa") as scp:
        yield scp


@pytest.fixture
def fast_path() -> bool:
    return True


@pytest.fixture
def strict_server(
    settings: Settings, tmp_path: Path, destination: Any, fast_path: bool
) -> Iterator[RunningServer]:
    remote_aes = [
        _remote("storer", "STORESCU", "127.0.0.1", 104, ["store"]),
        _remote("finder", "FINDSCU", "localhost", 104, ["find"]),
        _remote("mover", "MOVESCU", "*", 104, ["move"]),
        _remote("getter", "GETSCU", "127.0.0.1", 104, ["get"]),
        _remote("faraway", "FARSCU", "192.0.2.1", 104, ["store", "find", "move", "get"]),
        # a C-MOVE destination needs no permission of its own
        _remote("dest", destination.ae_title, "127.0.0.1", destination.port, []),
    ]
    running = start_server(settings, tmp_path, env={
        "HILUM_DICOM__ACCEPT_UNKNOWN_AES": "false",
        "HILUM_REMOTE_AES": json.dumps(remote_aes),
        "HILUM_DICOM__FAST_PATH": "true" if fast_path else "false",
    })
    try:
        yield running
    finally:
        stop_server(running)
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


def _associate(server: RunningServer, calling: str, *contexts: Any, **kwargs: Any) -> Any:
    ae = scu_ae(calling)
    for context in contexts:
        if isinstance(context, tuple):
            ae.add_requested_context(*context)
        else:
            ae.add_requested_context(context)
    return ae.associate("127.0.0.1", server.port, ae_title=server.ae_title, **kwargs)


def _rejection(assoc: Association) -> tuple[int, ...]:
    assert assoc.is_rejected, "the association was not rejected"
    rj = assoc.acceptor.primitive
    return (rj.result, rj.result_source, rj.diagnostic)


def _store(server: RunningServer, calling: str, path: Path) -> int:
    meta = dcmread(path, stop_before_pixels=True)
    assoc = _associate(server, calling, (meta.SOPClassUID, [meta.file_meta.TransferSyntaxUID]))
    assert assoc.is_established
    try:
        with chunked_send():
            status = assoc.send_c_store(path)
        return int(status.Status)
    finally:
        assoc.release()


def _final(responses: Any) -> Dataset:
    last = None
    for status, _ in responses:
        assert status, "no response (timeout or abort)"
        last = status
    assert last is not None
    return last


def test_unknown_aes_are_rejected_at_association(
    strict_server: RunningServer, tmp_path: Path
) -> None:
    server = strict_server
    for calling in ("NOBODY", "FARSCU"):  # unknown title; known title from the wrong host
        out = dcmtk("echoscu", "-aet", calling, *scp_args(server))
        assert out.returncode != 0
        assert "Calling AE Title Not Recognized" in out.stdout + out.stderr, out.stdout + out.stderr
        assoc = _associate(server, calling, Verification)
        assert _rejection(assoc) == CALLING_AE_NOT_RECOGNIZED
    # C-ECHO is always allowed to a known AE, whatever its permissions
    for calling in ("STORESCU", "FINDSCU", "MOVESCU", "GETSCU", "DESTSCP"):
        out = dcmtk("echoscu", "-aet", calling, *scp_args(server))
        assert out.returncode == 0, (calling, out.stdout + out.stderr)
    # nothing from an unknown AE is stored
    files = write_study(StudySpec(patient_id="PAT-UNKNOWN", slices=1), tmp_path / "in")
    out = dcmtk("storescu", "-aet", "NOBODY", *scp_args(server), *map(str, files))
    assert out.returncode != 0 and "Calling AE Title Not Recognized" in out.stdout + out.stderr
    assert snapshot(server.settings).rows["instances"] == 0
    # Hilum's own SCU (calling AE title HILUM) is not a known AE either
    echo = server.hilum("echo", f"{server.ae_title}@127.0.0.1:{server.port}", check=False)
    assert echo.returncode == 1 and "rejected" in echo.stdout + echo.stderr
    assert "not a known remote AE" in server.log.read_text()
    # every refusal is in the audit trail: Security Alert, Node Authentication
    refusals = wait_for(lambda: [
        r for r in _audit_records(server.settings, "Security Alert") if r["user_id"] == "NOBODY"
    ], 20, "the refused associations' audit records")
    assert all("110126" in r["xml"] and "not a known remote AE" in r["xml"] for r in refusals)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "stock-pynetdicom"])
def test_each_service_needs_its_permission(
    strict_server: RunningServer, destination: Any, tmp_path: Path
) -> None:
    server = strict_server
    spec = StudySpec(patient_id="PAT-PERM", slices=2)
    files = write_study(spec, tmp_path / "study")
    empty = snapshot(server.settings)

    # -- C-STORE: STORESCU may, FINDSCU may not ------------------------------------------
    refused = dcmtk("storescu", "-v", "-aet", "FINDSCU", *scp_args(server), *map(str, files))
    text_out = refused.stdout + refused.stderr
    assert "Store Response (Unknown Status: 0x124)" in text_out, text_out  # DCMTK has no name for it
    assert _store(server, "FINDSCU", files[0]) == NOT_AUTHORIZED
    # a data set large enough to be streamed to staging is discarded too
    big = write_study(StudySpec(patient_id="PAT-BIG", slices=1, size=3000), tmp_path / "big")[0]
    assert big.stat().st_size > 16 * 1024 * 1024
    assert _store(server, "GETSCU", big) == NOT_AUTHORIZED
    after = snapshot(server.settings)
    assert after == empty and not after.staging
    stored = dcmtk("storescu", "-aet", "STORESCU", *scp_args(server), *map(str, files))
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert snapshot(server.settings).rows["instances"] == 2

    # -- C-FIND: FINDSCU may, STORESCU may not -----------------------------------------------
    query = identifier("STUDY", PatientID="PAT-PERM", StudyInstanceUID="")
    assoc = _associate(server, "STORESCU", StudyRootQueryRetrieveInformationModelFind)
    try:
        responses = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    assert [int(s.Status) for s, _ in responses] == [NOT_AUTHORIZED]
    assert all(ds is None for _, ds in responses)
    found = dcmtk("findscu", "-S", "-aet", "FINDSCU", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", "PatientID=PAT-PERM", *scp_args(server))
    assert found.returncode == 0 and "PAT-PERM" in found.stdout + found.stderr
    denied = dcmtk("findscu", "-v", "-S", "-aet", "GETSCU", "-k", "QueryRetrieveLevel=STUDY",
                   "-k", "PatientID=PAT-PERM", *scp_args(server))
    text_out = denied.stdout + denied.stderr
    assert "Find Response: 1" not in text_out, text_out  # no match sent
    assert "Received Final Find Response (Unknown Status: 0x124)" in text_out, text_out

    # -- C-MOVE: MOVESCU (host "*") may; FINDSCU may not, and no sub-association opens ----------
    move = identifier("STUDY", StudyInstanceUID=spec.study_uid)
    destination_log = destination.log.read_text()
    assoc = _associate(server, "FINDSCU", StudyRootQueryRetrieveInformationModelMove)
    try:
        final = _final(assoc.send_c_move(
            move, destination.ae_title, StudyRootQueryRetrieveInformationModelMove
        ))
    finally:
        assoc.release()
    assert int(final.Status) == NOT_AUTHORIZED
    time.sleep(0.5)
    assert destination.received() == []
    assert destination.log.read_text() == destination_log  # not even an association
    denied_move = dcmtk("movescu", "-S", "-aet", "GETSCU", "-aem", destination.ae_title,
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={spec.study_uid}",
                        *scp_args(server))
    text_out = denied_move.stdout + denied_move.stderr
    assert denied_move.returncode != 0 and "Unknown Status: 0x124" in text_out, text_out
    assert destination.log.read_text() == destination_log
    moved = dcmtk("movescu", "-S", "-aet", "MOVESCU", "-aem", destination.ae_title,
                  "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={spec.study_uid}",
                  *scp_args(server))
    assert moved.returncode == 0, moved.stdout + moved.stderr
    wait_for(lambda: len(destination.received()) == 2, what="moved instances")

    # -- C-GET: GETSCU may, STORESCU may not ------------------------------------------------------
    got_dir = tmp_path / "got"
    got_dir.mkdir()
    denied_get = dcmtk("getscu", "-S", "-aet", "STORESCU", "-od", str(got_dir),
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={spec.study_uid}",
                       *scp_args(server))
    text_out = denied_get.stdout + denied_get.stderr
    assert list(got_dir.iterdir()) == [] and "Unknown Status: 0x124" in text_out, text_out
    from pynetdicom import build_role

    assoc = _associate(
        server, "STORESCU", StudyRootQueryRetrieveInformationModelGet,
        (CTImageStorage, UNCOMPRESSED), ext_neg=[build_role(CTImageStorage, scp_role=True)],
    )
    try:
        final = _final(assoc.send_c_get(move, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert int(final.Status) == NOT_AUTHORIZED
    got = dcmtk("getscu", "-S", "-aet", "GETSCU", "-od", str(got_dir),
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={spec.study_uid}",
                *scp_args(server))
    assert got.returncode == 0, got.stdout + got.stderr
    assert len(list(got_dir.iterdir())) == 2

    # -- Storage Commitment belongs to "store" -------------------------------------------------
    request = Dataset()
    request.TransactionUID = "2.25.1234"
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = files[0].stem
    request.ReferencedSOPSequence = [item]
    assoc = _associate(server, "FINDSCU", StorageCommitmentPushModel)
    try:
        status, _ = assoc.send_n_action(
            request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
        )
    finally:
        assoc.release()
    assert int(status.Status) == NOT_AUTHORIZED
    assert "lacks the 'find' permission" in server.log.read_text()


def test_changes_apply_without_restart_and_unknown_aes_keep_every_service(
    server: RunningServer, tmp_path: Path
) -> None:
    """With accept_unknown_aes = true (the tests' setting): unknown AEs may do everything; a known AE
    is held to its permissions, from the moment `hilum ae add` writes it (TABLE_TTL)."""
    files = write_study(StudySpec(patient_id="PAT-LATE", slices=2), tmp_path / "in")
    assert _store(server, "LATESCU", files[0]) == 0x0000  # unknown: admitted, may store

    server.hilum("ae", "add", "late", "LATESCU", "127.0.0.1", "104", "--permissions", "find")
    wait_for(lambda: _store(server, "LATESCU", files[1]) == NOT_AUTHORIZED, timeout=15,
             what="the new permissions to apply")
    assert _store(server, "OTHERSCU", files[1]) == 0x0000  # other unknown AEs are unaffected
    query = identifier("STUDY", PatientID="PAT-LATE")
    assoc = _associate(server, "LATESCU", StudyRootQueryRetrieveInformationModelFind)
    try:
        assert int(_final(assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind)).Status) == 0x0000
    finally:
        assoc.release()

    server.hilum("ae", "remove", "late")
    wait_for(lambda: _store(server, "LATESCU", files[1]) == 0x0000, timeout=15,
             what="the removal to apply")


def _audit_records(settings: Settings, event: str) -> list[dict[str, Any]]:
    from hilum.audit import store

    engine = make_engine(settings.index_url, pool_size=1)
    try:
        return store.search(engine, store.AuditFilter(event=event), limit=1000)
    finally:
        engine.dispose()
