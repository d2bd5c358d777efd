"""A throw-away PKI for TLS tests, made with the openssl command line.

One test CA signs a server certificate (localhost, 127.0.0.1) and a client
certificate; a second, unrelated CA signs a "rogue" client certificate that
Hilum must not accept. RSA keys, so TLS 1.2 peers limited to the BCP 195
ECDHE_RSA suites (DCMTK's default profile) can use them too.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    ca: Path  # the test CA's certificate (PEM): what peers verify against
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # signed by another CA
    rogue_key: Path
    rogue_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command line tool is needed to make test certificates")
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-noenc", "-keyout", str(key), "-out", str(cert),
        "-days", "2", "-subj", f"/O=Hilum tests/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )
    return cert, key


def _leaf(
    folder: Path, name: str, ca: tuple[Path, Path], usage: str, san: str | None = None
) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    _openssl(
        "req", "-newkey", "rsa:2048", "-noenc", "-keyout", str(key), "-out", str(csr),
        "-subj", f"/O=Hilum tests/CN={name}", cwd=folder,
    )
    extensions = folder / f"{name}.ext"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
    ]
    if san:
        lines.append(f"subjectAltName={san}")
    extensions.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions),
        cwd=folder,
    )
    return cert, key


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "hilum-test-ca")
    rogue_ca = _ca(folder, "rogue-ca")
    server = _leaf(folder, "server", ca, "serverAuth,clientAuth", "DNS:localhost,IP:127.0.0.1")
    client = _leaf(folder, "client", ca, "clientAuth,serverAuth", "DNS:localhost,IP:127.0.0.1")
    rogue = _leaf(folder, "rogue", rogue_ca, "clientAuth")
    return Pki(
        ca=ca[0],
        server_cert=server[0], server_key=server[1],
        client_cert=client[0], client_key=client[1],
        rogue_cert=rogue[0], rogue_key=rogue[1], rogue_ca=rogue_ca[0],
    )
