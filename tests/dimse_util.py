"""Helpers shared by the DIMSE integration tests (test_dimse_*, test_commitment, corpus).

Peers are real: DCMTK command-line tools run as subprocesses, pynetdicom runs
in the test process. The server under test is always a separate `hilum serve`.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
    build_role,
    evt,
)
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from sqlalchemy import func, select, text

from conftest import RunningServer, free_port, require_tool
from hilum.config import Settings
from hilum.index.database import make_engine
from hilum.index.models import Instance, Patient, PatientConflict, Series, Study

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


# -- the server's index and storage, read directly -------------------------------
@dataclass(frozen=True)
class Snapshot:
    """Row counts of the index and the files in the storage area."""

    rows: dict[str, int]
    files: frozenset[str]
    staging: frozenset[str]


def snapshot(settings: Settings) -> Snapshot:
    engine = make_engine(settings.index_url, pool_size=1)
    try:
        with engine.connect() as conn:
            rows = {
                model.__tablename__: int(
                    conn.execute(select(func.count()).select_from(model.__table__)).scalar_one()
                )
                for model in (Patient, Study, Series, Instance, PatientConflict)
            }
    finally:
        engine.dispose()
    root = settings.storage_dir
    files = set()
    staging = set()
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        (staging if rel.startswith(".staging/") else files).add(rel)
    return Snapshot(rows=rows, files=frozenset(files), staging=frozenset(staging))


def query_rows(settings: Settings, sql: str, **params: Any) -> list[Any]:
    engine = make_engine(settings.index_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())
    finally:
        engine.dispose()


def instance_row(settings: Settings, sop_instance_uid: str) -> Any:
    rows = query_rows(
        settings,
        "SELECT sop_class_uid, transfer_syntax_uid, storage_key, size_bytes, sha256 "
        "FROM instances WHERE sop_instance_uid = :uid",
        uid=sop_instance_uid,
    )
    assert len(rows) <= 1
    return rows[0] if rows else None


def stored_path(settings: Settings, sop_instance_uid: str) -> Path:
    row = instance_row(settings, sop_instance_uid)
    assert row is not None, f"{sop_instance_uid} is not in the index"
    return settings.storage_dir / row.storage_key


def wait_for(predicate: Any, timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# -- DICOM bytes ------------------------------------------------------------------
def dataset_bytes(path: Path) -> bytes:
    """Everything after the File Meta Information of a Part 10 file."""
    _, offset = split_dataset(path)
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read()


# -- DCMTK --------------------------------------------------------------------------
def dcmtk(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool (never raises on a non-zero exit; callers assert)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return subprocess.run(
        [require_tool(tool), *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )


def scp_args(server: RunningServer) -> list[str]:
    return ["-aec", server.ae_title, "127.0.0.1", str(server.port)]


def wait_listening(port: int, timeout: float = 20) -> None:
    def _connects() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(_connects, timeout, f"a listener on port {port}")


@dataclass
class StoreScp:
    ae_title: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]
    log: Path

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())


@contextmanager
def dcmtk_storescp(
    folder: Path, ae_title: str = "DCMTKSCP", *options: str
) -> Iterator[StoreScp]:
    """DCMTK storescp on a free port, writing into ``folder``.

    ``options`` default to ``+xa`` (accept every transfer syntax); pass e.g.
    ``"+xe"`` for a peer that accepts only uncompressed explicit VR little
    endian, or add ``"-B"`` to write the data sets bit-preserving.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder.parent / f"storescp-{ae_title}-{port}.log"
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    handle = log.open("wb")
    command = [
        require_tool("storescp"), "-aet", ae_title, "-od", str(folder), "-v",
        *(options or ("+xa",)), str(port),
    ]
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        wait_listening(port)
        yield StoreScp(ae_title, port, folder, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        handle.close()


# -- pynetdicom SCU -------------------------------------------------------------------
@contextmanager
def chunked_send() -> Iterator[None]:
    """Send C-STORE data sets straight from their files, bytes untouched."""
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old


def scu_ae(ae_title: str = "PYSCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = 30
    ae.dimse_timeout = 120
    ae.network_timeout = 120
    return ae


def associate(ae: AE, server: RunningServer, **kwargs: Any) -> Any:
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title, **kwargs)
    assert assoc.is_established, "association with the server was not established"
    return assoc


def c_find(
    server: RunningServer, identifier: Dataset, model: Any = StudyRootQueryRetrieveInformationModelFind
) -> list[Dataset]:
    ae = scu_ae()
    ae.add_requested_context(model)
    assoc = associate(ae, server)
    results = []
    try:
        for status, ds in assoc.send_c_find(identifier, model):
            assert status, "no C-FIND response"
            if status.Status in (0xFF00, 0xFF01):
                results.append(ds)
            else:
                assert status.Status == 0x0000, f"C-FIND status 0x{status.Status:04X}"
    finally:
        assoc.release()
    return results


@dataclass
class GetResult:
    status: Dataset
    # SOP Instance UID -> (transfer syntax of the sub-operation, encoded data set)
    received: dict[str, tuple[str, bytes]] = field(default_factory=dict)


class GetSession:
    """One C-GET association (pynetdicom); ``contexts``: SOP class -> syntaxes to accept.

    One presentation context per (SOP class, transfer syntax), so the server
    sees exactly which syntaxes the requestor accepts. Received data sets are
    kept as the bytes that came over the wire.
    """

    def __init__(
        self,
        server: RunningServer,
        contexts: dict[str, list[str]],
        *,
        model: Any = StudyRootQueryRetrieveInformationModelGet,
        ae_title: str = "PYGET",
    ) -> None:
        self.model = model
        ae = scu_ae(ae_title)
        ae.add_requested_context(model)
        roles = []
        for sop_class, syntaxes in contexts.items():
            for ts in syntaxes:
                ae.add_requested_context(sop_class, [ts])
            roles.append(build_role(sop_class, scp_role=True))
        assert len(ae.requested_contexts) <= 128
        self._received: dict[str, tuple[str, bytes]] = {}
        self.assoc = associate(
            ae, server, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event: Any) -> int:
        self._received[str(event.request.AffectedSOPInstanceUID)] = (
            str(event.context.transfer_syntax), event.encoded_dataset(include_meta=False)
        )
        return 0x0000

    def get(self, identifier: Dataset) -> GetResult:
        self._received = {}
        last = None
        for status, _ in self.assoc.send_c_get(identifier, self.model):
            assert status, "no C-GET response (timeout or abort)"
            last = status
        assert last is not None
        return GetResult(status=last, received=self._received)

    def close(self) -> None:
        self.assoc.release()

    def __enter__(self) -> GetSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def c_get(
    server: RunningServer,
    identifier: Dataset,
    contexts: dict[str, list[str]],
    *,
    model: Any = StudyRootQueryRetrieveInformationModelGet,
    ae_title: str = "PYGET",
) -> GetResult:
    """A single C-GET on its own association (see :class:`GetSession`)."""
    with GetSession(server, contexts, model=model, ae_title=ae_title) as session:
        return session.get(identifier)


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


_DUMP_LINE = re.compile(
    r"\((?P<group>[0-9a-fA-F]{4}),(?P<element>[0-9a-fA-F]{4})\)\s+(?P<vr>[A-Z]{2})\s+"
    r"(?:\[(?P<value>[^\]]*)\]|\(no value available\)|=\S*|\S+).*?#\s*\d+,\s*\d+\s+(?P<keyword>\w+)"
)


def findscu(server: RunningServer, *keys: str, root: str = "-S") -> list[dict[str, str]]:
    """DCMTK findscu; each response as keyword -> value (stripped, '' when empty)."""
    args = [root, "-aet", "FINDSCU"]
    for key in keys:
        args += ["-k", key]
    out = dcmtk("findscu", *args, *scp_args(server))
    assert out.returncode == 0, out.stdout + out.stderr
    text_out = out.stdout + out.stderr
    responses = []
    for block in re.split(r"Find Response: \d+ \(Pending\)", text_out)[1:]:
        values = {}
        for match in _DUMP_LINE.finditer(block):
            values[match["keyword"]] = (match["value"] or "").strip()
        responses.append(values)
    return responses


class PynetdicomStoreScp:
    """A pynetdicom storage SCP (every storage class and syntax) that keeps the wire bytes."""

    def __init__(self, ae_title: str = "PYSCP") -> None:
        self.ae_title = ae_title
        self.port = free_port()
        # SOP Instance UID -> (transfer syntax, encoded data set as received)
        self.received: dict[str, tuple[str, bytes]] = {}
        ae = AE(ae_title=ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event: Any) -> int:
        self.received[str(event.request.AffectedSOPInstanceUID)] = (
            str(event.context.transfer_syntax), event.encoded_dataset(include_meta=False)
        )
        return 0x0000

    def close(self) -> None:
        self._server.shutdown()

    def __enter__(self) -> PynetdicomStoreScp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
