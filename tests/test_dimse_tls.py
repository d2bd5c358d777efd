"""DICOM TLS (PS3.15 B.9/B.10): Hilum's TLS port, driven by DCMTK built with OpenSSL.

The TLS listener is served by the same receiving processes as the plain port.
Certificates come from a throw-away CA made with the openssl command line
(tls_util.py). Also: Hilum as a TLS client (``tls = true`` remote AEs) for
`hilum store|echo` and for C-MOVE sub-operations.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom.sop_class import Verification

from conftest import RunningServer, free_port, hilum_env, start_server, stop_server
from dimse_util import (
    dataset_bytes,
    dcmtk,
    dcmtk_storescp,
    scu_ae,
    snapshot,
    stored_path,
    wait_for,
)
from factory import StudySpec, write_study
from hilum.config import Settings
from tls_util import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class TlsServer:
    server: RunningServer
    tls_port: int
    pki: Pki

    def args(self) -> list[str]:
        """DCMTK: called AE title, host and the TLS port."""
        return ["-aec", self.server.ae_title, "127.0.0.1", str(self.tls_port)]


def tls_env(pki: Pki, *, tls_port: int = 0, require_client_certificate: bool = True) -> dict[str, str]:
    env = {
        "HILUM_DICOM__TLS_CERTIFICATE": str(pki.server_cert),
        "HILUM_DICOM__TLS_PRIVATE_KEY": str(pki.server_key),
        "HILUM_DICOM__TLS_CA_CERTIFICATES": str(pki.ca),
        "HILUM_DICOM__TLS_REQUIRE_CLIENT_CERTIFICATE": str(require_client_certificate).lower(),
    }
    if tls_port:
        env["HILUM_DICOM__TLS_PORT"] = str(tls_port)
    return env


def dcmtk_tls(pki: Pki, cert: Path | None = None, key: Path | None = None) -> list[str]:
    """DCMTK options: TLS with a client certificate (the test CA's by default), trusting the CA."""
    return ["+tls", str(key or pki.client_key), str(cert or pki.client_cert), "-pw",
            "+cf", str(pki.ca)]


@pytest.fixture
def require_client_certificate() -> bool:
    return True


@pytest.fixture
def tls_server(
    settings: Settings, tmp_path: Path, pki: Pki, require_client_certificate: bool
) -> Iterator[TlsServer]:
    port = free_port()
    running = start_server(settings, tmp_path, env=tls_env(
        pki, tls_port=port, require_client_certificate=require_client_certificate
    ))
    try:
        yield TlsServer(running, port, pki)
    finally:
        stop_server(running)
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


def test_dcmtk_over_tls_with_client_certificates(tls_server: TlsServer, tmp_path: Path) -> None:
    server, pki, pki_args = tls_server.server, tls_server.pki, dcmtk_tls
    assert f"TLS on port {tls_server.tls_port}" in server.log.read_text()

    echo = dcmtk("echoscu", "-v", *pki_args(pki), *tls_server.args())
    assert echo.returncode == 0, echo.stdout + echo.stderr

    spec = StudySpec(patient_id="PAT-TLS", slices=2)
    files = write_study(spec, tmp_path / "study")
    # ~5 MB: many TLS records per PDU, and PDUs ending inside a record
    big = write_study(StudySpec(patient_id="PAT-TLS", slices=1, size=1600,
                                study_uid=spec.study_uid), tmp_path / "big")
    stored = dcmtk("storescu", *pki_args(pki), *tls_server.args(), *map(str, files + big))
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert snapshot(server.settings).rows["instances"] == 3
    for path in files + big:
        assert dataset_bytes(stored_path(server.settings, path.stem)) == dataset_bytes(path)

    found = dcmtk("findscu", "-S", *pki_args(pki), "-k", "QueryRetrieveLevel=STUDY",
                  "-k", "PatientID=PAT-TLS", "-k", "NumberOfStudyRelatedInstances",
                  *tls_server.args())
    text_out = found.stdout + found.stderr
    assert found.returncode == 0 and "[PAT-TLS ]" in text_out and "[3 ]" in text_out, text_out

    # -- refused: no client certificate, one from another CA, no TLS at all ------------------
    before = snapshot(server.settings)
    other = write_study(StudySpec(patient_id="PAT-NOTLS", slices=1), tmp_path / "other")
    attempts = {
        "no client certificate": ["+tla", "+cf", str(pki.ca)],
        "certificate from another CA": dcmtk_tls(pki, pki.rogue_cert, pki.rogue_key),
        "plain TCP": [],
    }
    for what, options in attempts.items():
        out = dcmtk("storescu", *options, *tls_server.args(), *map(str, other))
        assert out.returncode != 0, what
        assert "Association Request Failed" in out.stdout + out.stderr, (what, out.stderr)
    assert snapshot(server.settings) == before
    log = server.log.read_text()
    for reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED",
                   "WRONG_VERSION_NUMBER"):
        assert reason in log, reason

    # -- the plain port is served by the same processes, meanwhile -----------------------------
    plain = dcmtk("echoscu", "-aec", server.ae_title, "127.0.0.1", str(server.port))
    assert plain.returncode == 0, plain.stdout + plain.stderr


def test_tls_versions_and_silent_peers(tls_server: TlsServer) -> None:
    server, pki = tls_server.server, tls_server.pki
    # TLS 1.2 (BCP 195 suites) works; pynetdicom as the client, C-ECHO and C-STORE
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    # idle connections to the TLS port (a handshake never started) hold up nobody
    idle = [socket.create_connection(("127.0.0.1", tls_server.tls_port)) for _ in range(6)]
    try:
        ae = scu_ae("PYTLS")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", tls_server.tls_port, ae_title=server.ae_title,
                             tls_args=(context, "localhost"))
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0x0000
            sock = assoc.dul.socket.socket
            assert sock.version() == "TLSv1.2" and "GCM" in sock.cipher()[0], sock.cipher()
        finally:
            assoc.release()
    finally:
        for sock in idle:
            sock.close()

    # TLS 1.1 and older: the server refuses (protocol version alert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
    with (
        socket.create_connection(("127.0.0.1", tls_server.tls_port)) as raw,
        pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"),
    ):
        old.wrap_socket(raw)


@pytest.mark.parametrize("require_client_certificate", [False])
def test_client_certificate_optional(tls_server: TlsServer, tmp_path: Path) -> None:
    server, pki = tls_server.server, tls_server.pki
    files = write_study(StudySpec(patient_id="PAT-ANON", slices=1), tmp_path / "in")
    anonymous = dcmtk("storescu", "+tla", "+cf", str(pki.ca), *tls_server.args(), *map(str, files))
    assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr
    assert snapshot(server.settings).rows["instances"] == 1
    # a certificate that is presented must still verify
    rogue = dcmtk("echoscu", *dcmtk_tls(pki, pki.rogue_cert, pki.rogue_key), *tls_server.args())
    assert rogue.returncode != 0


# -- Hilum as a TLS client ---------------------------------------------------------------------
def _hilum(settings: Settings, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "hilum.cli", *args, "--data-dir", str(settings.data_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**hilum_env(settings), **env})


def test_hilum_sends_and_moves_over_tls(settings: Settings, tmp_path: Path, pki: Pki) -> None:
    # DCMTK storescp on TLS, requiring (by default) a client certificate from the test CA
    with dcmtk_storescp(
        tmp_path / "received", "TLSSCP", "+xa", "+tls", str(pki.client_key),
        str(pki.client_cert), "-pw", "+cf", str(pki.ca),
    ) as scp:
        remote_aes = [
            {"name": "tlsscp", "ae_title": "TLSSCP", "host": "127.0.0.1", "port": scp.port,
             "tls": True},
            {"name": "plainscp", "ae_title": "PLAINSCP", "host": "localhost", "port": scp.port},
        ]
        env = {**tls_env(pki), "HILUM_REMOTE_AES": json.dumps(remote_aes)}
        files = write_study(StudySpec(patient_id="PAT-OUT", slices=3), tmp_path / "out")

        echo = _hilum(settings, env, "echo", "tlsscp")
        assert echo.returncode == 0 and "status 0x0000" in echo.stdout, echo.stdout + echo.stderr
        sent = _hilum(settings, env, "store", "tlsscp", *map(str, files[:1]))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert len(scp.received()) == 1
        # the same peer without TLS: the association fails
        plain = _hilum(settings, env, "echo", "plainscp")
        assert plain.returncode == 1, plain.stdout + plain.stderr

        # C-MOVE: the sub-operations go over TLS to a tls = true destination
        running = start_server(settings, tmp_path, env=env)
        try:
            stored = dcmtk("storescu", "-aec", running.ae_title, "127.0.0.1", str(running.port),
                           *map(str, files))
            assert stored.returncode == 0, stored.stdout + stored.stderr
            study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            moved = dcmtk("movescu", "-S", "-aet", "MOVER", "-aem", "TLSSCP",
                          "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                          "-aec", running.ae_title, "127.0.0.1", str(running.port))
            assert moved.returncode == 0, moved.stdout + moved.stderr
            # the first instance again (storescp overwrites it), and the two others
            wait_for(lambda: len(scp.received()) == 3, what="moved instances")
        finally:
            stop_server(running)
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in scp.received()}
    assert received == {p.stem for p in files}


def test_unusable_certificate_stops_serve(settings: Settings, tmp_path: Path, pki: Pki) -> None:
    env = tls_env(pki, tls_port=free_port())
    env["HILUM_DICOM__TLS_PRIVATE_KEY"] = str(pki.client_key)  # not the certificate's key
    result = subprocess.run(
        [sys.executable, "-m", "hilum.cli", "serve", "--data-dir", str(settings.data_dir),
         "--dicom-port", str(settings.dicom.port), "--http-port", str(settings.http.port),
         "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=60, env={**hilum_env(settings), **env},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "dicom.tls_certificate / dicom.tls_private_key" in result.stderr, result.stderr
    assert "cannot use certificate" in result.stderr, result.stderr


def test_storage_commitment_over_tls(tls_server: TlsServer, tmp_path: Path) -> None:
    """N-ACTION over TLS to Hilum's TLS port; the N-EVENT-REPORT comes back over TLS, with
    Hilum's client certificate, to a remote AE with tls = true (PS3.15 B.9)."""
    import queue
    import ssl

    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel

    pki, server = tls_server.pki, tls_server.server
    files = write_study(StudySpec(patient_id="PAT-TLSCOMMIT", slices=2), tmp_path / "in")
    stored = dcmtk("storescu", "-aet", "TLSCOMMIT", *dcmtk_tls(pki), *tls_server.args(), *map(str, files))
    assert stored.returncode == 0, stored.stdout + stored.stderr

    reports: queue.Queue[tuple[int, Dataset, bool]] = queue.Queue()

    def on_report(event: Any) -> tuple[int, None]:
        sock = event.assoc.dul.socket.socket
        reports.put((int(event.event_type), event.event_information, isinstance(sock, ssl.SSLSocket)))
        return 0x0000, None

    # the committing SCU listens over TLS and demands Hilum's client certificate
    listen = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    listen.verify_mode = ssl.CERT_REQUIRED
    listen.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    port = free_port()
    ae = AE(ae_title="TLSCOMMIT")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    listener = ae.start_server(("127.0.0.1", port), block=False, ssl_context=listen,
                               evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        server.hilum("ae", "add", "tlscommit", "TLSCOMMIT", "127.0.0.1", str(port), "--tls")
        connect = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
        connect.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        info = Dataset()
        info.TransactionUID = generate_uid()
        info.ReferencedSOPSequence = []
        for path in files:
            item = Dataset()
            item.ReferencedSOPClassUID = CTImageStorage
            item.ReferencedSOPInstanceUID = path.stem
            info.ReferencedSOPSequence.append(item)

        def request() -> int:
            assoc = ae.associate("127.0.0.1", tls_server.tls_port, ae_title=server.ae_title,
                                 tls_args=(connect, "localhost"))
            assert assoc.is_established
            try:
                status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
            finally:
                assoc.release()
            assert status
            return int(status.Status)

        # the remote AE table is re-read within a few seconds of `hilum ae add`
        wait_for(lambda: request() == 0x0000, timeout=20, what="the N-ACTION to be accepted")
        event_type, report, over_tls = reports.get(timeout=30)
    finally:
        listener.shutdown()
    assert over_tls, "the report did not come over TLS"
    assert event_type == 1  # all committed
    assert {str(i.ReferencedSOPInstanceUID) for i in report.ReferencedSOPSequence} == {p.stem for p in files}


def test_tls_only_without_the_plain_port(settings: Settings, tmp_path: Path, pki: Pki) -> None:
    """dicom.port = 0 (`--dicom-port 0`): only the TLS port listens, so a required client
    certificate cannot be bypassed by calling the same AE title on the plain port."""
    old_port, tls_port = settings.dicom.port, free_port()
    running = start_server(settings, tmp_path, "--dicom-port", "0",
                           env=tls_env(pki, tls_port=tls_port))
    try:
        assert f"TLS on port {tls_port} only (no plain DICOM port)" in running.log.read_text()
        # plain: nothing listens on the old port any more
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", old_port), timeout=10).close()
        ae = scu_ae("PYPLAIN")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", old_port, ae_title=running.ae_title)
        assert not assoc.is_established
        plain = dcmtk("echoscu", "-aec", running.ae_title, "127.0.0.1", str(old_port))
        assert plain.returncode != 0 and "Association Request Failed" in plain.stdout + plain.stderr
        # TLS with a client certificate: C-ECHO and C-STORE work
        tls_args = ["-aec", running.ae_title, "127.0.0.1", str(tls_port)]
        echo = dcmtk("echoscu", *dcmtk_tls(pki), *tls_args)
        assert echo.returncode == 0, echo.stdout + echo.stderr
        files = write_study(StudySpec(patient_id="PAT-TLSONLY", slices=1), tmp_path / "in")
        stored = dcmtk("storescu", *dcmtk_tls(pki), *tls_args, *map(str, files))
        assert stored.returncode == 0, stored.stdout + stored.stderr
        assert dataset_bytes(stored_path(settings, files[0].stem)) == dataset_bytes(files[0])
        # and TLS without one is still refused
        anonymous = dcmtk("echoscu", "+tla", "+cf", str(pki.ca), *tls_args)
        assert anonymous.returncode != 0
    finally:
        stop_server(running)
    assert "Traceback" not in running.log.read_text(), running.log.read_text()

    # neither port: a configuration error naming the keys, before anything starts
    result = subprocess.run(
        [sys.executable, "-m", "hilum.cli", "serve", "--data-dir", str(settings.data_dir),
         "--dicom-port", "0", "--http-port", str(settings.http.port), "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=60, env=hilum_env(settings),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "dicom" in result.stderr and "needs tls_port" in result.stderr, result.stderr
