"""Encryption at rest: master keys and the encrypted file format.

Each stored file gets its own random 256-bit data key (DEK). The file body is
the plaintext cut into fixed segments (64 KiB), each sealed with AES-256-GCM
under the DEK; the DEK itself is kept in the file's header, wrapped (AES-KW,
RFC 3394) under a key derived from a *master key* that lives outside the
storage area (a key file or an environment variable). Rotating the master key
re-wraps the 40-byte DEK in each header; the segments are never touched.

Layout (all integers little endian)::

    fixed header, 64 bytes (authenticated: the AAD of every segment)
      0   8  magic b"\\x89HLMENC\\n"
      8   2  format version (1)
     10   2  header size (192)
     12   4  segment size (plaintext bytes per segment)
     16   8  plaintext length
     24  16  file id (random; salt of the key-wrapping key)
     40   7  nonce prefix (random)
     47  17  reserved, zero
    key slot 0 at 64, key slot 1 at 128, 64 bytes each
      0  16  master key id (all zero: empty slot)
     16  40  the DEK wrapped with AES-KW under
             KEK = HKDF-SHA256(master key, salt = file id,
                               info = "hilum kek v1" + fixed header + storage key)
     56   8  reserved, zero
    segments, at 192: max(1, ceil(length / segment size)) of them, each
      AES-256-GCM(DEK, nonce = prefix(7) | segment number (4, big endian) | last (1),
                  plaintext segment, AAD = fixed header) = ciphertext | 16-byte tag

The nonce construction is the STREAM one of Hoang, Reyhanitabar, Rogaway and
Vizár (also Tink's streaming AEAD): the segment number in the nonce detects
reordering, the last-segment flag detects truncation, the per-file DEK detects
segments swapped between files, and the fixed header as AAD detects an edited
length, segment size or file id. A wrapped DEK is bound to its file through
the KEK derivation, which also takes the storage key the file is stored under:
a whole file copied over another instance's file does not open. Any mismatch
raises :class:`StorageIntegrityError`: no byte of a segment is returned before
its tag has been checked.

Two key slots make rotation crash-safe without an atomic multi-byte write:
the new wrap goes into the slot not in use, is made durable, and only then is
the old slot cleared. At every moment one slot opens the file under a key the
operator still has.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import secrets
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from hilum.storage.base import StorageIntegrityError, StorageKeyError

LOG = logging.getLogger(__name__)

MAGIC = b"\x89HLMENC\n"
VERSION = 1
FIXED_SIZE = 64
SLOT_SIZE = 64
SLOT_OFFSETS = (64, 128)
HEADER_SIZE = 192
SEGMENT_SIZE = 64 * 1024
TAG_SIZE = 16
KEY_SIZE = 32
KEY_ID_SIZE = 16
WRAPPED_SIZE = 40
_EMPTY_ID = bytes(KEY_ID_SIZE)
_FIXED = struct.Struct("<8sHHIQ16s7s17x")
_KEY_FILE_HEADER = "# Hilum master key (storage encryption at rest)"


# -- master keys --------------------------------------------------------------------
@dataclass(frozen=True)
class MasterKey:
    """A 256-bit master key and its id (a fingerprint derived from it, safe to show)."""

    secret: bytes = field(repr=False)
    source: str = ""  # where it was read from, for messages

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_SIZE:
            raise ValueError(f"a master key is {KEY_SIZE} bytes, not {len(self.secret)}")

    @cached_property
    def key_id(self) -> bytes:
        return _hkdf(self.secret, None, b"hilum master key id v1", KEY_ID_SIZE)

    @property
    def hex_id(self) -> str:
        return self.key_id.hex()

    def kek(self, header: Header, name: str) -> bytes:
        """The key that wraps this file's DEK: bound to the file by its id and fixed header,
        and to the storage key ``name`` it is stored under."""
        info = b"hilum kek v1" + header.fixed + name.encode()
        return _hkdf(self.secret, header.file_id, info, KEY_SIZE)


def _hkdf(secret: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def generate_key() -> MasterKey:
    return MasterKey(secrets.token_bytes(KEY_SIZE), "generated")


def format_key_file(key: MasterKey) -> str:
    encoded = base64.b64encode(key.secret).decode()
    return (
        f"{_KEY_FILE_HEADER}. Key id: {key.hex_id}\n"
        "# Without this key the files stored under it cannot be read: keep a copy\n"
        "# apart from the data (see docs/security.md, Encryption at rest).\n"
        f"{encoded}\n"
    )


def parse_key(text: str, source: str) -> MasterKey:
    """A key given as base64 (standard or URL-safe) or 64 hex digits."""
    value = text.strip()
    secret: bytes | None = None
    if len(value) == 2 * KEY_SIZE and all(c in "0123456789abcdefABCDEF" for c in value):
        secret = bytes.fromhex(value)
    else:
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                candidate = decode(value + "=" * (-len(value) % 4))
            except (binascii.Error, ValueError):
                continue
            if len(candidate) == KEY_SIZE:
                secret = candidate
                break
    if secret is None:
        raise KeyFileError(
            f"{source}: not a master key (expected 32 bytes as base64 or 64 hex digits; "
            "`hilum keys generate` writes one)"
        )
    return MasterKey(secret, source)


class KeyFileError(Exception):
    """A key file or variable that cannot be used; the message says which and why."""


def read_key_file(path: Path) -> MasterKey:
    """Read a key file: comment lines (#) and one base64/hex line, or 32 raw bytes."""
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read the master key file {path}: {exc.strerror or exc}") from None
    if len(data) == KEY_SIZE and not _is_text(data):
        key = MasterKey(data, str(path))
    else:
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise KeyFileError(f"{path}: not a master key file") from None
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if len(lines) != 1:
            raise KeyFileError(f"{path}: expected one key line, found {len(lines)}")
        key = parse_key(lines[0], str(path))
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Not refused (container secrets are often mounted 0644), but said loudly.
        LOG.warning(
            "master key file %s is readable by other users (mode %o); chmod 600 it", path, mode & 0o777
        )
    return key


def _is_text(data: bytes) -> bool:
    try:
        return data.decode("ascii").isprintable()
    except UnicodeDecodeError:
        return False


def write_key_file(path: Path, key: MasterKey) -> None:
    """Write ``key`` to a new file, mode 0600; never overwrites an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, format_key_file(key).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class KeyRing:
    """The master keys a process knows: ``current`` wraps new files; all of them open files."""

    def __init__(self, current: MasterKey | None, others: Iterable[MasterKey] = ()) -> None:
        self.current = current
        self._keys: dict[bytes, MasterKey] = {}
        for key in (current, *others):
            if key is not None:
                self._keys.setdefault(key.key_id, key)

    def get(self, key_id: bytes) -> MasterKey | None:
        return self._keys.get(key_id)

    def keys(self) -> list[MasterKey]:
        return list(self._keys.values())

    def ids(self) -> list[str]:
        return [k.hex() for k in self._keys]

    def with_keys(self, *keys: MasterKey, current: MasterKey | None = None) -> KeyRing:
        return KeyRing(current or self.current, [*self._keys.values(), *keys])

    def __bool__(self) -> bool:
        return bool(self._keys)


# -- the header -----------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    key_id: bytes
    wrapped: bytes

    @property
    def empty(self) -> bool:
        return self.key_id == _EMPTY_ID

    def encode(self) -> bytes:
        return self.key_id + self.wrapped + bytes(SLOT_SIZE - KEY_ID_SIZE - WRAPPED_SIZE)


EMPTY_SLOT = Slot(_EMPTY_ID, bytes(WRAPPED_SIZE))


@dataclass(frozen=True)
class Header:
    fixed: bytes
    segment_size: int
    plaintext_length: int
    file_id: bytes
    nonce_prefix: bytes
    slots: tuple[Slot, Slot]

    @property
    def segments(self) -> int:
        return segment_count(self.plaintext_length, self.segment_size)

    @property
    def file_size(self) -> int:
        return HEADER_SIZE + self.plaintext_length + self.segments * TAG_SIZE

    def key_ids(self) -> list[str]:
        return [s.key_id.hex() for s in self.slots if not s.empty]


def is_encrypted(head: bytes) -> bool:
    return head[: len(MAGIC)] == MAGIC


def segment_count(length: int, segment_size: int) -> int:
    return max(1, -(-length // segment_size))


def encrypted_size(length: int, segment_size: int = SEGMENT_SIZE) -> int:
    return HEADER_SIZE + length + segment_count(length, segment_size) * TAG_SIZE


def parse_header(raw: bytes, what: str) -> Header:
    if len(raw) < HEADER_SIZE or not is_encrypted(raw):
        raise StorageIntegrityError(f"{what}: not an encrypted file, or its header is cut short")
    _magic, version, header_size, segment_size, length, file_id, prefix = _FIXED.unpack_from(raw)
    if version != VERSION or header_size != HEADER_SIZE:
        raise StorageIntegrityError(
            f"{what}: encrypted file format version {version} (header {header_size} bytes) is not "
            f"supported by this Hilum (version {VERSION})"
        )
    if not 4096 <= segment_size <= 1 << 26 or raw[47:FIXED_SIZE] != bytes(FIXED_SIZE - 47):
        raise StorageIntegrityError(f"{what}: the encryption header is damaged")
    slots = tuple(
        Slot(raw[o : o + KEY_ID_SIZE], raw[o + KEY_ID_SIZE : o + KEY_ID_SIZE + WRAPPED_SIZE])
        for o in SLOT_OFFSETS
    )
    return Header(bytes(raw[:FIXED_SIZE]), segment_size, length, file_id, prefix, (slots[0], slots[1]))


def new_header(length: int, key: MasterKey, name: str,
               segment_size: int = SEGMENT_SIZE) -> tuple[bytes, bytes]:
    """(header bytes, DEK) for a new file ``name`` of ``length`` plaintext bytes wrapped under ``key``."""
    fixed = _FIXED.pack(MAGIC, VERSION, HEADER_SIZE, segment_size, length,
                        secrets.token_bytes(16), secrets.token_bytes(7))
    dek = AESGCM.generate_key(bit_length=256)
    header = Header(fixed, segment_size, length, fixed[24:40], fixed[40:47], (EMPTY_SLOT, EMPTY_SLOT))
    slot = wrap(header, key, dek, name)
    return fixed + slot.encode() + EMPTY_SLOT.encode(), dek


def wrap(header: Header, key: MasterKey, dek: bytes, name: str) -> Slot:
    return Slot(key.key_id, aes_key_wrap(key.kek(header, name), dek))


def unwrap(header: Header, keyring: KeyRing, name: str) -> tuple[bytes, MasterKey, int]:
    """(DEK, the master key that opened it, slot index); raises if no configured key opens it."""
    what = f"stored file {name}"
    damaged = []
    for index, slot in enumerate(header.slots):
        if slot.empty:
            continue
        key = keyring.get(slot.key_id)
        if key is None:
            continue
        try:
            return aes_key_unwrap(key.kek(header, name), slot.wrapped), key, index
        except InvalidUnwrap:
            damaged.append(slot.key_id.hex())
    if damaged:
        raise StorageIntegrityError(
            f"{what}: its data key does not unwrap under master key {damaged[0]}: "
            "the header was altered or is damaged, or the file is not the one stored under this name"
        )
    wrapped_by = header.key_ids()
    if not wrapped_by:
        raise StorageIntegrityError(f"{what}: the encryption header holds no key")
    configured = ", ".join(keyring.ids()) or "none"
    raise StorageKeyError(
        f"{what} is encrypted under master key {' or '.join(wrapped_by)}, which is not configured "
        f"(configured: {configured}); give that key (storage.encryption.previous_key_files)"
    )


# -- sealing and opening segments --------------------------------------------------------
def _nonce(header: Header, index: int, last: bool) -> bytes:
    return header.nonce_prefix + struct.pack(">IB", index, 1 if last else 0)


def encrypt_file(source: BinaryIO, target_fd: int, length: int, key: MasterKey, name: str,
                 segment_size: int = SEGMENT_SIZE) -> None:
    """Write ``length`` bytes of ``source`` to ``target_fd`` as the encrypted file to be stored
    as ``name``, under ``key``."""
    raw, dek = new_header(length, key, name, segment_size)
    header = parse_header(raw, "new file")
    aead = AESGCM(dek)
    _write_all(target_fd, raw)
    count = header.segments
    out: list[bytes] = []
    pending = 0
    for index in range(count):
        want = min(segment_size, length - index * segment_size)
        chunk = source.read(want)
        if len(chunk) != want:
            raise OSError(f"the file to encrypt changed while it was read ({len(chunk)} of {want} bytes)")
        out.append(aead.encrypt(_nonce(header, index, index == count - 1), chunk, header.fixed))
        pending += len(out[-1])
        if pending >= 1 << 20:
            _write_all(target_fd, b"".join(out))
            out.clear()
            pending = 0
    if source.read(1):
        raise OSError("the file to encrypt grew while it was read")
    if out:
        _write_all(target_fd, b"".join(out))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class EncryptedReader(io.RawIOBase):
    """A seekable, read-only view of the plaintext: decrypts only the segments it is asked for.

    Deliberately not an ``io.BufferedReader`` and without a ``name``: pydicom then keeps
    this object (and never reopens the ciphertext by path) for deferred reads.
    """

    def __init__(self, fd: int, header: Header, dek: bytes, what: str) -> None:
        super().__init__()
        self._fd = fd
        self._header = header
        self._aead = AESGCM(dek)
        self._what = what
        self._pos = 0
        self._cached_index = -1
        self._cached = b""
        self.length = header.plaintext_length

    # io.RawIOBase --------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.length + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(22, "negative seek position")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        end = self.length if size is None or size < 0 else min(self.length, self._pos + size)
        if end <= self._pos:
            return b""
        seg = self._header.segment_size
        parts = []
        pos = self._pos
        while pos < end:
            index, start = divmod(pos, seg)
            plain = self._segment(index)
            stop = min(len(plain), start + end - pos)
            parts.append(plain[start:stop] if start or stop < len(plain) else plain)
            pos += stop - start
        self._pos = end
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
            self._cached = b""
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    # segments ------------------------------------------------------------------------
    def _segment(self, index: int) -> bytes:
        if index == self._cached_index:
            return self._cached
        header = self._header
        seg = header.segment_size
        last = index == header.segments - 1
        plain_len = header.plaintext_length - index * seg if last else seg
        offset = HEADER_SIZE + index * (seg + TAG_SIZE)
        sealed = _pread_all(self._fd, plain_len + TAG_SIZE, offset)
        if len(sealed) != plain_len + TAG_SIZE:
            raise StorageIntegrityError(f"{self._what}: the encrypted file is cut short (segment {index})")
        try:
            plain = self._aead.decrypt(_nonce(header, index, last), sealed, header.fixed)
        except InvalidTag:
            raise StorageIntegrityError(
                f"{self._what}: segment {index} fails authentication (altered, damaged or misplaced data)"
            ) from None
        self._cached_index, self._cached = index, plain
        return plain


def open_encrypted(fd: int, keyring: KeyRing, name: str, *, head: bytes | None = None) -> EncryptedReader:
    """Open the encrypted file stored as ``name`` whose descriptor is ``fd`` (taken over:
    closed on error or by the reader)."""
    what = f"stored file {name}"
    try:
        raw = head if head is not None and len(head) >= HEADER_SIZE else _pread_all(fd, HEADER_SIZE, 0)
        header = parse_header(raw, what)
        actual = os.fstat(fd).st_size
        if actual != header.file_size:
            raise StorageIntegrityError(
                f"{what}: the encrypted file is {actual} bytes, its header says {header.file_size}: "
                "cut short or extended"
            )
        dek, _, _ = unwrap(header, keyring, name)
        return EncryptedReader(fd, header, dek, what)
    except BaseException:
        os.close(fd)
        raise


def verify(reader: EncryptedReader, chunk: int = 1 << 20) -> int:
    """Authenticate every segment (reads the whole file); the plaintext length."""
    reader.seek(0)
    total = 0
    while data := reader.read(chunk):
        total += len(data)
    return total

