"""The audit trail: DICOM audit messages (PS3.15 A.5) in a tamper-evident hash chain.

Real peers drive the server (DCMTK storescu/findscu/getscu/movescu, the
dicomweb-client library, httpx); records are read back from the index, through
the API and with `hilum audit`. Syslog forwarding is checked against UDP and TLS
listeners started here, which parse the RFC 5424 frames they receive.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi import FastAPI, Request
from pydicom import dcmread
from pydicom.filereader import read_dataset
from sqlalchemy import text

from conftest import RunningServer, free_port, hilum_env, run_hilum, start_server, stop_server
from dimse_util import dcmtk, dcmtk_storescp, findscu, scp_args, wait_for
from factory import StudySpec, write_study
from hilum.app import Services
from hilum.audit import builders, codes, store
from hilum.audit.builders import Party, Patient
from hilum.audit.http import AuditMiddleware
from hilum.audit.messages import AuditMessage, AuditSource, to_xml
from hilum.audit.service import AuditService
from hilum.config import ConfigError, Settings, load_settings
from hilum.domain.events import InstanceStored
from hilum.index.database import make_engine

# -- the PS3.15 A.5.1 schema, as checks --------------------------------------------------------
_CODED_REQUIRED = {"csd-code", "codeSystemName", "originalText"}
_CODED_ALLOWED = _CODED_REQUIRED | {"displayName"}
_XSD_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def _attrs(element: ET.Element, required: set[str], optional: set[str]) -> None:
    keys = set(element.attrib)
    assert required <= keys, f"{element.tag} lacks {required - keys}"
    assert keys <= required | optional, f"{element.tag} has unknown {keys - required - optional}"


def _coded(element: ET.Element) -> None:
    _attrs(element, _CODED_REQUIRED, _CODED_ALLOWED - _CODED_REQUIRED)
    assert len(element) == 0


def _sequence(element: ET.Element, pattern: str, letters: dict[str, str]) -> list[ET.Element]:
    """Children match ``pattern`` over one letter per tag (element order of the schema)."""
    word = ""
    for child in element:
        assert child.tag in letters, f"unexpected <{child.tag}> in <{element.tag}>"
        word += letters[child.tag]
    assert re.fullmatch(pattern, word), f"<{element.tag}> children {word!r} !~ {pattern}"
    return list(element)


def check_audit_message(document: str) -> ET.Element:
    """Parse ``document`` and check it against the DICOM audit message schema (A.5.1)."""
    root = ET.fromstring(document)
    assert root.tag == "AuditMessage" and not root.attrib
    children = _sequence(root, "EA+SP*", {
        "EventIdentification": "E", "ActiveParticipant": "A", "AuditSourceIdentification": "S",
        "ParticipantObjectIdentification": "P",
    })
    event = children[0]
    _attrs(event, {"EventDateTime", "EventOutcomeIndicator"}, {"EventActionCode"})
    assert _XSD_DATETIME.match(event.get("EventDateTime", ""))
    assert event.get("EventOutcomeIndicator") in ("0", "4", "8", "12")
    assert event.get("EventActionCode", "C") in "CRUDE"
    for child in _sequence(event, "IT*O?U*", {"EventID": "I", "EventTypeCode": "T",
                                               "EventOutcomeDescription": "O", "PurposeOfUse": "U"}):
        if child.tag != "EventOutcomeDescription":
            _coded(child)
    for participant in (c for c in children if c.tag == "ActiveParticipant"):
        _attrs(participant, {"UserID", "UserIsRequestor"},
               {"AlternativeUserID", "UserName", "NetworkAccessPointID", "NetworkAccessPointTypeCode"})
        assert participant.get("UserIsRequestor") in ("true", "false")
        assert participant.get("NetworkAccessPointTypeCode", "1") in "12345"
        for child in _sequence(participant, "R*M?", {"RoleIDCode": "R", "MediaIdentifier": "M"}):
            if child.tag == "RoleIDCode":
                _coded(child)
            else:
                [media_type] = _sequence(child, "T", {"MediaType": "T"})
                _coded(media_type)
    [source] = [c for c in children if c.tag == "AuditSourceIdentification"]
    _attrs(source, {"AuditSourceID"}, {"AuditEnterpriseSiteID"})
    for child in _sequence(source, "T*", {"AuditSourceTypeCode": "T"}):
        assert "csd-code" in child.attrib
    for obj in (c for c in children if c.tag == "ParticipantObjectIdentification"):
        _attrs(obj, {"ParticipantObjectID"}, {
            "ParticipantObjectTypeCode", "ParticipantObjectTypeCodeRole", "ParticipantObjectDataLifeCycle",
            "ParticipantObjectSensitivity",
        })
        assert obj.get("ParticipantObjectTypeCode", "1") in ("1", "2", "3", "4")
        assert 1 <= int(obj.get("ParticipantObjectTypeCodeRole", "1")) <= 26
        assert 1 <= int(obj.get("ParticipantObjectDataLifeCycle", "1")) <= 15
        letters = {"ParticipantObjectIDTypeCode": "I", "ParticipantObjectName": "N",
                   "ParticipantObjectQuery": "Q", "ParticipantObjectDetail": "D",
                   "ParticipantObjectDescription": "S"}
        for child in _sequence(obj, "I[NQ]?D*S*", letters):
            if child.tag == "ParticipantObjectIDTypeCode":
                _coded(child)
            elif child.tag == "ParticipantObjectQuery":
                assert _BASE64.match(child.text or "")
            elif child.tag == "ParticipantObjectDetail":
                _attrs(child, {"type", "value"}, set())
                assert _BASE64.match(child.get("value", ""))
            elif child.tag == "ParticipantObjectDescription":
                for item in _sequence(child, "M*A*C*S?E?N?", {"MPPS": "M", "Accession": "A", "SOPClass": "C",
                                                             "ParticipantObjectContainsStudy": "S",
                                                             "Encrypted": "E", "Anonymized": "N"}):
                    if item.tag == "SOPClass":
                        _attrs(item, {"NumberOfInstances"}, {"UID"})
                        assert int(item.get("NumberOfInstances", "")) >= 0
    return root


def _objects(root: ET.Element, id_type: str) -> list[ET.Element]:
    return [
        o for o in root.findall("ParticipantObjectIdentification")
        if o.find("ParticipantObjectIDTypeCode").get("csd-code") == id_type  # type: ignore[union-attr]
    ]


def _event(root: ET.Element) -> tuple[str, list[str], str, str]:
    event = root.find("EventIdentification")
    assert event is not None
    types = [t.get("csd-code", "") for t in event.findall("EventTypeCode")]
    return (event.find("EventID").get("csd-code", ""), types,  # type: ignore[union-attr]
            event.get("EventActionCode", ""), event.get("EventOutcomeIndicator", ""))


def _requestor(root: ET.Element) -> ET.Element:
    [found] = [p for p in root.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
    return found


def _roles(participant: ET.Element) -> set[str]:
    return {r.get("csd-code", "") for r in participant.findall("RoleIDCode")}


# -- messages, without a database --------------------------------------------------------------
def test_every_kind_of_message_is_a_valid_a5_audit_message() -> None:
    user = Party("alice", "192.0.2.7", user_name="Alice A")
    node = Party("HILUM", "pacs.example.org", alternative_user_id="1234")
    peer = Party("CT1", "192.0.2.9")
    studies = {"1.2.3": {"1.2.840.10008.5.1.4.1.1.2": 3}}
    patients = [Patient("PAT1", "HOSP", "DOE^JANE")]
    messages: list[AuditMessage] = [
        builders.application_activity(node, Party("root", "pacs"), started=True),
        builders.application_activity(node, None, started=False),
        builders.audit_log_used(user, node, "hilum:audit_records"),
        builders.begin_transferring(source=node, destination=peer, requestor=user, studies=studies,
                                    patients=patients),
        builders.transferred(source=peer, destination=node, requestor=peer, studies=studies, action="C",
                             patients=patients),
        builders.transferred(source=node, destination=peer, requestor=user, studies=studies,
                             outcome=codes.MINOR_FAILURE, detail="cancelled <after> 2 & more"),
        builders.accessed(requestor=user, node=node, studies=studies, action="D", patients=patients),
        builders.deleted(requestor=user, node=node, level="STUDY", studies=["1.2.3"], patients=patients),
        builders.deleted(requestor=user, node=node, level="PATIENT", studies=["1.2.3"], patients=patients),
        builders.export(requestor=user, node=node, media_uri="https://pacs/api/v1/studies/1.2.3/archive",
                        studies=studies, patients=patients),
        builders.imported(requestor=user, node=node, studies=studies),
        builders.query(requestor=peer, node=node, sop_class_uid=codes.STUDY_ROOT_FIND,
                       query_bytes=b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ",
                       transfer_syntax="1.2.840.10008.1.2", patients=[Patient("PAT1")]),
        builders.security_alert(reporter=user, node=node, event_type=codes.USER_SECURITY_ATTRIBUTES_CHANGED,
                                subject=builders.user_subject("bob"), detail="role set to auditor"),
        builders.security_alert(reporter=user, node=node, event_type=codes.NETWORK_CONFIGURATION,
                                subject=builders.node_subject("ct1"), detail="remote AE added"),
        builders.user_authentication(user=user, node=node, success=False, detail="bad password\x00\x07"),
    ]
    source = AuditSource("HILUM@pacs", "Site 1")
    for message in messages:
        root = check_audit_message(to_xml(message, source))
        assert _requestor(root) is not None  # exactly one requestor in each

    # the codes PS3.15 A.5.3 asks for, on the objects that carry them
    root = check_audit_message(to_xml(messages[4], source))
    assert _event(root) == ("110104", [], "C", "0")
    [study] = _objects(root, "110180")
    assert (study.get("ParticipantObjectID"), study.get("ParticipantObjectTypeCode"),
            study.get("ParticipantObjectTypeCodeRole")) == ("1.2.3", "2", "3")
    assert study.find("ParticipantObjectDescription/SOPClass").attrib == {  # type: ignore[union-attr]
        "UID": "1.2.840.10008.5.1.4.1.1.2", "NumberOfInstances": "3"}
    [patient] = _objects(root, "2")
    assert (patient.get("ParticipantObjectID"), patient.get("ParticipantObjectTypeCode"),
            patient.get("ParticipantObjectTypeCodeRole")) == ("PAT1^^^HOSP", "1", "1")
    assert patient.findtext("ParticipantObjectName") == "DOE^JANE"
    assert {frozenset(_roles(p)) for p in root.findall("ActiveParticipant")} == {
        frozenset({"110153"}), frozenset({"110152"})}
    assert _requestor(root).get("UserID") == "CT1"

    root = check_audit_message(to_xml(messages[11], source))
    [query] = _objects(root, "110181")
    assert query.get("ParticipantObjectTypeCodeRole") == "24"
    assert base64.b64decode(query.findtext("ParticipantObjectQuery") or "").endswith(b"STUDY ")
    detail = query.find("ParticipantObjectDetail")
    assert detail is not None and base64.b64decode(detail.get("value", "")) == b"1.2.840.10008.1.2"

    root = check_audit_message(to_xml(messages[14], source))
    assert _event(root) == ("110114", ["110122"], "E", "4")
    assert root.findtext("EventIdentification/EventOutcomeDescription") == "bad password\ufffd\ufffd"


def test_syslog_url_is_checked() -> None:
    with pytest.raises(ConfigError, match="syslog_url"):
        load_settings(None, audit={"syslog_url": "http://collector:514"})
    with pytest.raises(ConfigError, match="flush_interval"):
        load_settings(None, audit={"flush_interval": 5})
    assert load_settings(None, audit={"syslog_url": "tls://c.example:6514"}).audit.syslog_url


# -- the chain ---------------------------------------------------------------------------------
def _sql(settings: Settings, statement: str, **params: Any) -> list[Any]:
    engine = make_engine(settings.index_url, pool_size=1)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


@pytest.mark.postgres  # the chain is verified in SQL: both back-ends
def test_verify_names_the_edited_or_removed_record(services: Services, settings: Settings) -> None:
    audit = services.audit
    for n in range(6):
        audit.user_authentication(f"user{n}", "10.1.1.1", success=n % 2 == 0, detail=f"attempt {n}")
    assert audit.flush()
    report = store.verify(services.engine)
    assert report.ok and report.records == 6 and report.head_seq == 6

    ok = run_hilum(settings, "audit", "verify")
    assert "intact: 6 record(s)" in ok.stdout  # then Audit Log Used is seq 7

    # an edited XML message
    [(original,)] = _sql(settings, "SELECT xml FROM audit_records WHERE seq = 3")
    _sql(settings, "UPDATE audit_records SET xml = :xml WHERE seq = 3",
         xml=original.replace('UserID="user2"', 'UserID="mallory"'))
    broken = run_hilum(settings, "audit", "verify", check=False)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "BROKEN at seq 3" in broken.stdout and "edited" in broken.stdout
    _sql(settings, "UPDATE audit_records SET xml = :xml WHERE seq = 3", xml=original)

    # an edited search column (the copy of the requestor the API filters on)
    _sql(settings, "UPDATE audit_records SET user_id = 'nobody' WHERE seq = 5")
    broken = run_hilum(settings, "audit", "verify", check=False)
    assert broken.returncode == 1 and "BROKEN at seq 5" in broken.stdout
    _sql(settings, "UPDATE audit_records SET user_id = 'user4' WHERE seq = 5")
    assert run_hilum(settings, "audit", "verify").returncode == 0

    # a removed record in the middle
    _sql(settings, "DELETE FROM audit_records WHERE seq = 4")
    broken = run_hilum(settings, "audit", "verify", check=False)
    assert broken.returncode == 1
    assert "BROKEN at seq 4: record 4 is missing (removed)" in broken.stdout
    # ... even when the rows after it are renumbered to hide the gap
    _sql(settings, "UPDATE audit_records SET seq = seq + 1000000 WHERE seq > 4")
    _sql(settings, "UPDATE audit_records SET seq = seq - 1000001 WHERE seq > 1000000")
    result = store.verify(services.engine)
    assert not result.ok and result.problem_seq == 4 and "does not follow" in result.problem

    # every failed verification raised a Security Alert
    alerts = store.search(services.engine, store.AuditFilter(event="Security Alert"), limit=10)
    assert len(alerts) == 3 and all(a["outcome"] == 8 for a in alerts)


@pytest.mark.postgres  # two writers on one chain: both back-ends
def test_records_from_two_processes_form_one_chain(settings: Settings, services: Services) -> None:
    script = """
import sys
from hilum.audit.service import AuditService
from hilum.config import load_settings
from hilum.index.database import make_engine
tag, count, data_dir, url = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
settings = load_settings(None, data_dir=data_dir, database_url=url, audit={"flush_interval": 0.05})
engine = make_engine(settings.index_url)
audit = AuditService(settings, engine)
for n in range(count):
    audit.user_authentication(f"writer-{tag}", "127.0.0.1", True, f"{tag}-{n}")
    if n % 7 == 0:
        audit.flush()
audit.close()
engine.dispose()
"""
    count = 150
    processes = [
        subprocess.Popen([sys.executable, "-c", script, tag, str(count), str(settings.data_dir),
                          settings.database_url], env=hilum_env(settings))
        for tag in ("a", "b")
    ]
    for process in processes:
        assert process.wait(timeout=240) == 0
    report = store.verify(services.engine)
    assert report.ok, report
    assert report.records == 2 * count
    for tag in ("a", "b"):
        rows = store.search(services.engine, store.AuditFilter(user=f"writer-{tag}"), limit=1000)
        assert len(rows) == count
    seqs = [r["seq"] for r in store.search(services.engine, store.AuditFilter(), limit=1000,
                                           newest_first=False)]
    assert seqs == list(range(1, 2 * count + 1))


def test_a_full_queue_loses_nothing_silently(
    services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    audit = services.audit
    audit.config = audit.config.model_copy(update={"queue_size": 100})
    monkeypatch.setattr(audit, "_ensure_thread", lambda: None)  # nothing drains the queue
    for n in range(130):
        audit.user_authentication("flood", "10.9.9.9", True, str(n))
    assert audit.lost == 30
    assert "audit queue full" in caplog.text
    monkeypatch.undo()
    assert audit.flush()
    assert len(store.search(services.engine, store.AuditFilter(user="flood"), limit=1000)) == 100
    [alert] = store.search(services.engine, store.AuditFilter(event="Audit Recording Stopped"))
    assert alert["outcome"] == codes.SERIOUS_FAILURE
    assert "30 audit message(s) lost" in alert["xml"]
    check_audit_message(alert["xml"])


def test_a_record_that_cannot_be_written_does_not_hold_up_the_others(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = services.audit
    audit.user_authentication("nul\x00user", "10.0.0.\x00", True, "a NUL\x00 in every field")
    assert audit.flush()  # NUL is replaced (PostgreSQL text cannot hold it)
    [row] = store.search(services.engine, store.AuditFilter())
    assert row["user_id"] == "nul\ufffduser"
    check_audit_message(row["xml"])

    write = audit._write

    def refuse_poison(batch: list[AuditMessage]) -> None:
        if any(m.requestor is not None and m.requestor.user_id == "poison" for m in batch):
            raise RuntimeError("cannot store this one")
        write(batch)

    monkeypatch.setattr(audit, "_write", refuse_poison)
    for name in ("ok1", "poison", "ok2"):
        audit.user_authentication(name, "10.0.0.1", True)
    for _ in range(4):  # fails as a batch, then is written one record at a time
        audit.flush()
    users = [r["user_id"] for r in store.search(services.engine, store.AuditFilter(event="Login"),
                                                newest_first=False)]
    assert users == ["nul\ufffduser", "ok1", "ok2"]
    assert audit.lost == 1
    monkeypatch.undo()
    assert audit.flush()
    [alert] = store.search(services.engine, store.AuditFilter(event="Audit Recording Stopped"))
    assert "1 audit message(s) lost" in alert["xml"]
    assert store.verify(services.engine).ok


def test_stored_instances_cost_little_and_fold_into_one_record_per_study(services: Services) -> None:
    """C-STORE publishes InstanceStored per instance; auditing it must not slow ingest."""
    studies = [f"1.2.826.0.1.3680043.10.1.{n}" for n in range(5)]
    events = [
        InstanceStored(
            sop_instance_uid=f"{studies[n % 5]}.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            series_instance_uid=f"{studies[n % 5]}.1", study_instance_uid=studies[n % 5],
            storage_key="k", size=1000, source="dimse:MODALITY@192.0.2.50", status="stored",
            new_study=False, new_series=False,
        )
        for n in range(20000)
    ]
    started = time.perf_counter()
    for event in events:
        services.events.publish(event)
    per_instance = (time.perf_counter() - started) / len(events)
    assert per_instance < 100e-6, f"{per_instance * 1e6:.1f} µs per stored instance"
    assert services.audit.flush()
    rows = store.search(services.engine, store.AuditFilter(event="DICOM Instances Transferred"), limit=100)
    assert sorted(store.members(r["study_uids"])[0] for r in rows) == sorted(studies)
    for row in rows:
        root = check_audit_message(row["xml"])
        assert _event(root)[2] == "C"
        assert row["user_id"] == "MODALITY" and row["source_ip"] == "192.0.2.50"
        [count] = root.findall(".//SOPClass")
        assert count.get("NumberOfInstances") == "4000"


# -- the HTTP middleware, in process -------------------------------------------------------------
def test_http_records_name_the_authenticated_user(services: Services) -> None:
    app = FastAPI()
    app.state.services = services
    app.add_middleware(AuditMiddleware)

    @app.get("/dicomweb/studies")
    def search(request: Request) -> list[Any]:
        request.state.principal = SimpleNamespace(username="dr.house")
        return []

    async def requests() -> list[int]:
        transport = httpx.ASGITransport(app=app, client=("198.51.100.4", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://hilum.test") as client:
            return [
                (await client.get("/dicomweb/studies", params=params)).status_code
                for params in ({"PatientID": "PAT9", "limit": "5"}, {"PatientID": "PAT*"})
            ]

    assert asyncio.run(requests()) == [200, 200]
    assert services.audit.flush()
    rows = store.search(services.engine, store.AuditFilter(event="Query"), newest_first=False)
    assert [(r["user_id"], r["source_ip"]) for r in rows] == [("dr.house", "198.51.100.4")] * 2
    assert store.members(rows[0]["patient_ids"]) == ["PAT9"]
    assert rows[1]["patient_ids"] == ""  # a wild card names no patient
    root = check_audit_message(rows[0]["xml"])
    query = base64.b64decode(root.findtext(".//ParticipantObjectQuery") or "")
    assert query == b"/dicomweb/studies?PatientID=PAT9&limit=5"

    services.audit.user_authentication("mallory", "203.0.113.5", False, "wrong password")
    assert services.audit.flush()
    [login] = store.search(services.engine, store.AuditFilter(event="Login"))
    assert (login["user_id"], login["source_ip"], login["outcome"]) == ("mallory", "203.0.113.5", 4)


# -- syslog forwarding -----------------------------------------------------------------------
_RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
    rb"(?P<sd>-|(?:\[[^\]]*\])+) \xef\xbb\xbf(?P<msg>.*)$", re.S,
)


def _parse_syslog(frame: bytes) -> dict[str, Any]:
    found = _RFC5424.match(frame)
    assert found, frame[:200]
    return {k: v.decode("utf-8") for k, v in found.groupdict().items()}


class _UdpCollector:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.frames: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self.frames.append(self.sock.recv(65535))
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


class _TlsCollector:
    """An RFC 5425 receiver: TLS, octet-counted frames; may demand a client certificate."""

    def __init__(self, context: ssl.SSLContext, port: int = 0) -> None:
        self.context = context
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(5)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.frames: list[bytes] = []
        self.peer_certificates: list[Any] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                self.peer_certificates.append(conn.getpeercert())
                reader = conn.makefile("rb")
                while True:
                    length = b""
                    while (char := reader.read(1)) not in (b" ", b""):
                        length += char
                    if not length:
                        return
                    self.frames.append(reader.read(int(length)))
        except (OSError, ssl.SSLError):
            return

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.listener.close()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A test CA, a collector certificate for localhost, and a client certificate for Hilum."""
    folder = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=Hilum test CA", cwd=folder)
    for name in ("collector", "hilum"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={'localhost' if name == 'collector' else 'hilum-node'}", cwd=folder)
        (folder / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
                 cwd=folder)
    return SimpleNamespace(ca=folder / "ca.pem",
                           collector=(folder / "collector.pem", folder / "collector.key"),
                           client=(folder / "hilum.pem", folder / "hilum.key"))


def _service_with(settings: Settings, **audit: Any) -> tuple[AuditService, Callable[[], None]]:
    configured = load_settings(None, data_dir=settings.data_dir, database_url=settings.database_url,
                               audit={"flush_interval": 0.1, **audit})
    engine = make_engine(configured.index_url, pool_size=2)
    service = AuditService(configured, engine)

    def close() -> None:
        service.close()
        engine.dispose()

    return service, close


def _check_frames(frames: list[bytes], users: list[str]) -> None:
    parsed = [_parse_syslog(f) for f in frames]
    assert [p["pri"] for p in parsed] == ["85"] * len(users)  # authpriv.notice
    assert {p["msgid"] for p in parsed} == {"IHE+RFC-3881"}
    assert {p["app"] for p in parsed} == {"hilum"}
    for p in parsed:
        datetime.fromisoformat(p["ts"].replace("Z", "+00:00"))
        assert re.fullmatch(r'\[meta sequenceId="\d+"\]', p["sd"])
    roots = [check_audit_message(p["msg"]) for p in parsed]
    assert [_requestor(r).get("UserID") for r in roots] == users


def test_syslog_over_udp(services: Services, settings: Settings) -> None:
    collector = _UdpCollector()
    audit, close = _service_with(settings, syslog_url=f"udp://127.0.0.1:{collector.port}")
    try:
        for name in ("ann", "ben", "cy"):
            audit.user_authentication(name, "10.0.0.1", True)
        assert audit.flush()
        wait_for(lambda: len(collector.frames) == 3, 10, "3 syslog datagrams")
        _check_frames(collector.frames, ["ann", "ben", "cy"])
        sequence_ids = [int(re.search(rb'sequenceId="(\d+)"', f)[1]) for f in collector.frames]  # type: ignore[index]
        assert sequence_ids == [r["seq"] for r in store.search(services.engine, store.AuditFilter(),
                                                                newest_first=False)]
    finally:
        close()
        collector.close()


def test_syslog_over_tls_with_client_certificate_and_retries(
    services: Services, settings: Settings, pki: SimpleNamespace
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(*map(str, pki.collector))
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as IHE ATNA asks
    port = free_port()
    audit, close = _service_with(
        settings, syslog_url=f"tls://localhost:{port}", syslog_ca_file=str(pki.ca),
        syslog_cert_file=str(pki.client[0]), syslog_key_file=str(pki.client[1]),
    )
    collector: _TlsCollector | None = None
    try:
        # the collector is down: recording and writing go on, forwarding waits
        started = time.monotonic()
        for name in ("dee", "eve"):
            audit.user_authentication(name, "10.0.0.2", False, "locked")
        assert audit.flush(timeout=5)
        assert time.monotonic() - started < 3
        assert store.verify(services.engine).records == 2
        assert audit.forwarder is not None and audit.forwarder.pending == 2
        time.sleep(1.0)  # a failed attempt or two
        collector = _TlsCollector(context, port)
        audit.user_authentication("fay", "10.0.0.2", True)
        assert audit.flush()
        wait_for(lambda: len(collector.frames) == 3, 40, "3 syslog messages over TLS")
        _check_frames(collector.frames, ["dee", "eve", "fay"])
        assert collector.peer_certificates[0]["subject"] == ((("commonName", "hilum-node"),),)
    finally:
        close()
        if collector is not None:
            collector.close()


def test_syslog_tls_refuses_an_unknown_collector(
    services: Services, settings: Settings, pki: SimpleNamespace
) -> None:
    """A collector whose certificate does not chain to the configured CA gets nothing."""
    folder = pki.ca.parent
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.pem",
             "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", cwd=folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(folder / "rogue.pem"), str(folder / "rogue.key"))
    collector = _TlsCollector(context)
    audit, close = _service_with(settings, syslog_url=f"tls://localhost:{collector.port}",
                                 syslog_ca_file=str(pki.ca))
    try:
        audit.user_authentication("gus", "10.0.0.3", True)
        assert audit.flush()
        time.sleep(1.5)
        assert collector.frames == []
        assert audit.forwarder is not None and audit.forwarder.failures >= 1 and audit.forwarder.pending == 1
    finally:
        close()
        collector.close()


# -- a real server: DIMSE and HTTP ----------------------------------------------------------------
@pytest.fixture
def audited_server(settings: Settings, tmp_path: Path) -> Iterator[RunningServer]:
    """`hilum serve` without HTTP logins (records name the client's address), one HTTP worker.

    Transfers are folded per process: with one HTTP worker, a client's reads of one
    study within a second of each other are one record.
    """
    running = start_server(settings, tmp_path, env={
        "HILUM_AUTH__ENABLED": "false", "HILUM_AUDIT__AGGREGATE_SECONDS": "1.0", "HILUM_HTTP__WORKERS": "1",
    })
    try:
        yield running
    finally:
        stop_server(running)


def _records(settings: Settings, **where: Any) -> list[dict[str, Any]]:
    engine = make_engine(settings.index_url, pool_size=1)
    try:
        return store.search(engine, store.AuditFilter(**where), limit=1000, newest_first=False)
    finally:
        engine.dispose()


def _wait_records(settings: Settings, count: int = 1, **where: Any) -> list[dict[str, Any]]:
    return wait_for(lambda: (found := _records(settings, **where)) and len(found) >= count and found,
                    20, f"{count} audit record(s) {where}")


def test_dimse_services_are_audited(
    audited_server: RunningServer, settings: Settings, tmp_path: Path
) -> None:
    spec = StudySpec(patient_id="PATDIMSE", patient_name="ROE^RICHARD", slices=3)
    files = write_study(spec, tmp_path / "in")
    out = dcmtk("storescu", "-aet", "MODALITY1", *scp_args(audited_server), *map(str, files))
    assert out.returncode == 0, out.stdout + out.stderr

    # C-STORE: one DICOM Instances Transferred (create) for the study
    [stored] = _wait_records(settings, event="DICOM Instances Transferred", study=spec.study_uid)
    root = check_audit_message(stored["xml"])
    assert _event(root)[2:] == ("C", "0")
    assert (stored["user_id"], stored["source_ip"]) == ("MODALITY1", "127.0.0.1")
    assert store.members(stored["patient_ids"]) == ["PATDIMSE"]  # looked up in the index
    assert root.find(".//SOPClass").get("NumberOfInstances") == "3"  # type: ignore[union-attr]
    assert _roles(_requestor(root)) == {"110153"}

    # C-FIND: a Query record holding the identifier as received
    assert len(findscu(audited_server, "QueryRetrieveLevel=STUDY", "PatientID=PATDIMSE",
                       "StudyInstanceUID")) == 1
    [query] = _wait_records(settings, event="Query", user="FINDSCU")
    root = check_audit_message(query["xml"])
    assert store.members(query["patient_ids"]) == ["PATDIMSE"]
    [query_object] = _objects(root, "110181")
    assert query_object.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root FIND
    syntax = base64.b64decode(query_object.find("ParticipantObjectDetail").get("value", "")).decode()  # type: ignore[union-attr]
    raw = base64.b64decode(query_object.findtext("ParticipantObjectQuery") or "")
    identifier = read_dataset(io.BytesIO(raw), is_implicit_VR=syntax == "1.2.840.10008.1.2",
                              is_little_endian=True)
    assert identifier.PatientID == "PATDIMSE" and identifier.QueryRetrieveLevel == "STUDY"

    # C-GET: Hilum sends to the requestor
    got = tmp_path / "got"
    got.mkdir()
    out = dcmtk("getscu", "-S", "-aet", "GETSCU", "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={spec.study_uid}", *scp_args(audited_server))
    assert out.returncode == 0, out.stdout + out.stderr
    [sent] = _wait_records(settings, event="DICOM Instances Transferred", user="GETSCU")
    root = check_audit_message(sent["xml"])
    assert _event(root)[2:] == ("R", "0")
    assert _roles(_requestor(root)) == {"110152"}  # the requestor is the destination
    assert root.find(".//SOPClass").get("NumberOfInstances") == "3"  # type: ignore[union-attr]

    # C-MOVE to a third AE: source Hilum, destination the storescp, requestor MOVESCU
    with dcmtk_storescp(tmp_path / "moved", "MOVEDEST") as scp:
        audited_server.hilum("ae", "add", "movedest", "MOVEDEST", "127.0.0.1", str(scp.port))
        out = dcmtk("movescu", "-S", "-aet", "MOVESCU", "-aem", "MOVEDEST", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={spec.study_uid}", *scp_args(audited_server))
        assert out.returncode == 0, out.stdout + out.stderr
    [moved] = _wait_records(settings, event="DICOM Instances Transferred", user="MOVESCU")
    root = check_audit_message(moved["xml"])
    participants = {p.get("UserID"): _roles(p) for p in root.findall("ActiveParticipant")}
    assert participants == {audited_server.ae_title: {"110153"}, "MOVEDEST": {"110152"}, "MOVESCU": set()}
    assert store.members(moved["patient_ids"]) == ["PATDIMSE"]

    # everything is in one intact chain, also over the API
    report = run_hilum(settings, "audit", "verify")
    assert "intact" in report.stdout
    listed = run_hilum(settings, "audit", "list", "--patient-id", "PATDIMSE", "--json")
    events = [json.loads(line)["event"] for line in listed.stdout.splitlines()]
    assert events.count("DICOM Instances Transferred") == 3 and "Query" in events


def test_http_requests_are_audited(audited_server: RunningServer, settings: Settings, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{settings.http.port}"
    client = DICOMwebClient(url=f"{base}/dicomweb")
    spec = StudySpec(patient_id="PATWEB", patient_name="WEB^WANDA", slices=2)
    datasets = [dcmread(p) for p in write_study(spec, tmp_path / "web")]

    client.store_instances(datasets)  # STOW-RS
    [stored] = _wait_records(settings, event="DICOM Instances Transferred", study=spec.study_uid)
    assert stored["source_ip"] == "127.0.0.1" and _event(check_audit_message(stored["xml"]))[2] == "C"

    assert len(client.search_for_studies(search_filters={"PatientID": "PATWEB"})) == 1  # QIDO-RS
    [query] = _wait_records(settings, event="Query", patient_id="PATWEB")
    root = check_audit_message(query["xml"])
    assert b"PatientID=PATWEB" in base64.b64decode(root.findtext(".//ParticipantObjectQuery") or "")

    # WADO-RS: metadata, the study, a frame: folded into one record for the study
    client.retrieve_study_metadata(spec.study_uid)
    client.retrieve_study(spec.study_uid)
    first = datasets[0]
    client.retrieve_instance_frames(spec.study_uid, first.SeriesInstanceUID, first.SOPInstanceUID, [1])
    transfers = _wait_records(settings, 2, event="DICOM Instances Transferred", study=spec.study_uid)
    [retrieved] = transfers[1:]
    root = check_audit_message(retrieved["xml"])
    assert _event(root)[2:] == ("R", "0") and _roles(_requestor(root)) == {"110152"}
    assert store.members(retrieved["patient_ids"]) == ["PATWEB"]
    time.sleep(1.0)
    assert len(_records(settings, event="DICOM Instances Transferred", study=spec.study_uid)) == 2

    # a retrieve of a study that is not there is recorded as a failure
    assert httpx.get(f"{base}/dicomweb/studies/1.2.3.4.5.404/metadata", timeout=10).status_code == 404
    [missing] = _wait_records(settings, study="1.2.3.4.5.404")
    assert missing["outcome"] == codes.MINOR_FAILURE

    # zip download: Export
    archive = httpx.get(f"{base}/api/v1/studies/{spec.study_uid}/archive", timeout=30)
    assert archive.status_code == 200
    [export] = _wait_records(settings, event="Export")
    root = check_audit_message(export["xml"])
    assert store.members(export["study_uids"]) == [spec.study_uid]
    assert store.members(export["patient_ids"]) == ["PATWEB"]
    assert root.find(".//MediaIdentifier/MediaType").get("csd-code") == "110037"  # type: ignore[union-attr]

    # a remote AE added: Security Alert (network configuration)
    created = httpx.post(f"{base}/api/v1/remote-aes", timeout=10, json={
        "name": "viewer9", "ae_title": "VIEWER9", "host": "127.0.0.1", "port": 11119})
    assert created.status_code == 201, created.text
    [alert] = _wait_records(settings, event="Network Configuration")
    assert "viewer9" in alert["xml"] and alert["outcome"] == 0

    # DELETE: DICOM Study Deleted, naming the patient it belonged to
    assert httpx.delete(f"{base}/api/v1/studies/{spec.study_uid}", timeout=30).status_code == 200
    [deleted] = _wait_records(settings, event="DICOM Study Deleted")
    root = check_audit_message(deleted["xml"])
    assert _event(root)[2:] == ("D", "0")
    assert store.members(deleted["patient_ids"]) == ["PATWEB"]
    assert store.members(deleted["study_uids"]) == [spec.study_uid]

    # the API: search (itself audited) and verification
    page = httpx.get(f"{base}/api/v1/audit", params={"patient_id": "PATWEB", "order": "asc"}, timeout=10)
    assert page.status_code == 200, page.text
    events = [r["event"] for r in page.json()["records"]]
    assert events[:2] == ["DICOM Instances Transferred", "Query"] and events[-1] == "DICOM Study Deleted"
    assert all(r["xml"].startswith("<?xml") and len(r["hash"]) == 64 for r in page.json()["records"])
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    assert httpx.get(f"{base}/api/v1/audit", params={"since": since, "event": "110106"},
                     timeout=10).json()["records"][0]["event"] == "Export"
    assert httpx.get(f"{base}/api/v1/audit", params={"outcome": 3}, timeout=10).status_code == 400
    verified = httpx.get(f"{base}/api/v1/audit/verify", timeout=30).json()
    assert verified["ok"] and verified["problem"] is None and verified["records"] >= 8
    [used, *_] = _wait_records(settings, event="Audit Log Used")
    assert used["source_ip"] == "127.0.0.1"


def test_application_start_and_stop_are_recorded(settings: Settings, tmp_path: Path) -> None:
    """`hilum serve` reports Application Start when it starts and Application Stop when it stops."""
    running = start_server(settings, tmp_path, env={"HILUM_AUTH__ENABLED": "false"})
    stop_server(running)
    records = _records(settings, event="Application Activity")
    assert [store.members(r["event_type"]) for r in records] == [["Application Start"], ["Application Stop"]]
    for record in records:
        root = check_audit_message(record["xml"])
        assert {p.get("UserID") for p in root.findall("ActiveParticipant")} >= {settings.dicom.ae_title}
    assert run_hilum(settings, "audit", "verify").returncode == 0


def test_refusals_command_line_changes_and_send_jobs_are_audited(
    audited_server: RunningServer, settings: Settings, tmp_path: Path
) -> None:
    """What happens outside a request of the HTTP API is audited too: `hilum ae` and
    `hilum user` changes, DIMSE requests refused for lack of permission (folded into one
    record per AE and service), and the instances a send job delivers."""
    audited_server.hilum("ae", "add", "limited", "LIMITED", "127.0.0.1", "104", "--permissions", "find")
    [added] = _wait_records(settings, event="Security Alert", user=f"cli:{_os_user()}")
    assert "remote AE added: LIMITED@127.0.0.1:104" in added["xml"]
    check_audit_message(added["xml"])
    subprocess.run(
        [sys.executable, "-m", "hilum.cli", "user", "add", "carol", "--role", "auditor",
         "--password-stdin", "--data-dir", str(settings.data_dir)],
        input="a-long-enough-password-42", text=True, env=hilum_env(settings), check=True,
        capture_output=True,
    )
    records = _wait_records(settings, 2, event="Security Alert", user=f"cli:{_os_user()}")
    created = [r for r in records if "user created with role auditor" in r["xml"]]
    assert created and "carol" in created[0]["xml"]

    # a C-STORE burst from an AE without the store permission: refused, one record
    spec = StudySpec(patient_id="PATREFUSED", slices=3)
    files = write_study(spec, tmp_path / "in")
    out = dcmtk("storescu", "-aet", "LIMITED", *scp_args(audited_server), *map(str, files))
    assert "0x124" in out.stdout + out.stderr or out.returncode != 0
    time.sleep(2.5)  # past the folding window
    [refused] = _wait_records(settings, event="Security Alert", user="LIMITED")
    root = check_audit_message(refused["xml"])
    assert refused["outcome"] == codes.MINOR_FAILURE
    assert "lacks the 'store' permission" in refused["xml"]
    assert root.find("EventIdentification/EventTypeCode").get("csd-code") == "110132"  # type: ignore[union-attr]

    # a send job: one DICOM Instances Transferred record per study, naming the job
    stored = dcmtk("storescu", "-aet", "MODALITY1", *scp_args(audited_server), *map(str, files))
    assert stored.returncode == 0, stored.stdout + stored.stderr
    with dcmtk_storescp(tmp_path / "sent", "JOBDEST") as scp:
        audited_server.hilum("ae", "add", "jobdest", "JOBDEST", "127.0.0.1", str(scp.port))
        base = f"http://127.0.0.1:{settings.http.port}"
        job = httpx.post(f"{base}/api/v1/jobs", json={
            "kind": "store", "study_instance_uid": spec.study_uid, "destination": "jobdest",
        }).json()
        sent = wait_for(
            lambda: [r for r in _records(settings, event="DICOM Instances Transferred", study=spec.study_uid)
                     if f"job {job['id']}" in r["xml"]],
            30, "the send job's transfer record",
        )
    root = check_audit_message(sent[0]["xml"])
    assert _event(root)[2:] == ("R", "0")
    participants = {p.get("UserID"): _roles(p) for p in root.findall("ActiveParticipant")}
    assert participants["JOBDEST"] == {"110152"}
    assert root.find(".//SOPClass").get("NumberOfInstances") == "3"  # type: ignore[union-attr]


def _os_user() -> str:
    from hilum.audit.service import os_user

    return os_user()
