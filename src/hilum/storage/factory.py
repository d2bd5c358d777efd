"""Building the storage area from the settings: plain, or encrypted at rest.

``open_storage(settings)`` is the one place that decides. It loads the master
keys (``[storage.encryption]``) and refuses, with a message that says what to
do, to run:

* with encryption enabled and no usable master key;
* on an area holding encrypted files (its marker file says so) with no key;
* with keys none of which has ever wrapped a file of this area (a wrong key file).

The marker, ``<storage>/.hilum-encryption``, lists the ids (fingerprints, not the
keys) of the master keys that have wrapped files here. It is written when
encryption is first enabled and when a rotation or ``encrypt-existing`` brings a
new key; it is never needed to read a file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hilum.domain.errors import HilumError
from hilum.storage.base import StorageArea
from hilum.storage.crypto import KeyFileError, KeyRing, MasterKey, parse_key, read_key_file
from hilum.storage.encrypted import EncryptedStorage
from hilum.storage.filesystem import FilesystemStorage
from hilum.storage.settings import EncryptionSettings

if TYPE_CHECKING:
    from hilum.config import Settings

LOG = logging.getLogger(__name__)
MARKER = ".hilum-encryption"
_MARKER_LOCK = ".hilum-encryption.lock"


class EncryptionConfigError(HilumError):
    """Encryption at rest is misconfigured; the message names the setting to fix."""


def load_keyring(config: EncryptionSettings, *, required: bool,
                 environ: dict[str, str] | None = None) -> KeyRing:
    """The configured master keys; with ``required``, a current key must be among them."""
    env = os.environ if environ is None else environ
    current: MasterKey | None = None
    others: list[MasterKey] = []
    try:
        if config.key_file:
            current = read_key_file(Path(config.key_file))
        elif config.key_env and env.get(config.key_env, "").strip():
            parts = [p for p in env[config.key_env].split(",") if p.strip()]
            keys = [parse_key(p, f"${config.key_env} (key {n + 1})") for n, p in enumerate(parts)]
            current, others = keys[0], keys[1:]
        for name in config.previous_key_files:
            others.append(read_key_file(Path(name)))
    except KeyFileError as exc:
        raise EncryptionConfigError(f"storage encryption: {exc}") from None
    if required and current is None:
        where = f"the environment variable {config.key_env} is not set" if config.key_env else (
            "storage.encryption.key_env is empty"
        )
        raise EncryptionConfigError(
            "storage.encryption.enabled is true but there is no master key: set "
            f"storage.encryption.key_file (see `hilum keys generate`) or {config.key_env or 'key_env'} "
            f"({where})"
        )
    return KeyRing(current, others)


@dataclass
class Marker:
    key_ids: list[str]
    since: str


def read_marker(root: Path) -> Marker | None:
    path = root / MARKER
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise EncryptionConfigError(f"cannot read {path}: {exc}") from None
    return Marker(key_ids=[str(k) for k in data.get("key_ids", [])], since=str(data.get("since", "")))


@contextmanager
def _marker_lock(root: Path) -> Iterator[None]:
    fd = os.open(root / _MARKER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_key_ids(root: Path, key_ids: Iterable[str]) -> None:
    """Add ``key_ids`` to the area's marker (created if need be), atomically and durably."""
    root.mkdir(parents=True, exist_ok=True)
    with _marker_lock(root):
        marker = read_marker(root) or Marker([], time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        added = [k for k in key_ids if k not in marker.key_ids]
        if not added and (root / MARKER).exists():
            return
        marker.key_ids.extend(added)
        body = json.dumps({"format": 1, "encrypted": True, "since": marker.since,
                           "key_ids": marker.key_ids}, indent=1) + "\n"
        tmp = root / f"{MARKER}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, root / MARKER)
        dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def check_keys_against_marker(keyring: KeyRing, marker: Marker | None, root: Path) -> None:
    if marker is None or not marker.key_ids or not keyring:
        return
    if set(marker.key_ids) & set(keyring.ids()):
        return
    raise EncryptionConfigError(
        f"none of the configured master keys ({', '.join(keyring.ids())}) has ever encrypted files "
        f"in {root} (its files are under {', '.join(marker.key_ids)}): wrong key file or variable? "
        "To start a new key, keep the old one in storage.encryption.previous_key_files and run "
        "`hilum keys rotate`. Only if no file is encrypted under those keys any more "
        f"(`hilum keys status`), delete {root / MARKER}."
    )


def open_storage(settings: Settings, *, startup: bool = False) -> StorageArea:
    """The storage area the settings describe. ``startup`` (``prepare``): also record a newly
    enabled key in the area's marker."""
    config = settings.storage.encryption
    inner = FilesystemStorage(settings.storage_dir)
    keyring = load_keyring(config, required=config.enabled)
    marker = read_marker(inner.root)
    if not keyring:
        if marker is not None:
            raise EncryptionConfigError(
                f"{inner.root} holds files encrypted at rest (see {inner.root / MARKER}), and no master "
                "key is configured: set storage.encryption.key_file or key_env (enabled = false then "
                "only stops encrypting new files)"
            )
        return inner
    check_keys_against_marker(keyring, marker, inner.root)
    if startup and config.enabled and keyring.current is not None:
        record_key_ids(inner.root, [keyring.current.hex_id])
    return EncryptedStorage(
        inner, keyring, encrypt=config.enabled, allow_plaintext=config.allow_plaintext
    )
