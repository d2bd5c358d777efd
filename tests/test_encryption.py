"""Encryption at rest: the file format, keys, rotation, start-up checks, and the archive
end to end (C-STORE in, C-GET / C-MOVE / WADO-RS / zip / send job / export out) with
only ciphertext on disk."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from conftest import (
    RunningServer,
    free_port,
    hilum_env,
    run_hilum,
    start_server,
    stop_server,
)
from dimse_util import (
    associate,
    chunked_send,
    dataset_bytes,
    dcmtk,
    dcmtk_storescp,
    query_rows,
    scp_args,
    scu_ae,
    wait_for,
)
from factory import StudySpec, stow_study, write_study
from hilum.config import Settings, load_settings
from hilum.storage.base import StorageIntegrityError, StorageKeyError, StoredFile
from hilum.storage.crypto import (
    HEADER_SIZE,
    MAGIC,
    SEGMENT_SIZE,
    SLOT_OFFSETS,
    TAG_SIZE,
    KeyRing,
    MasterKey,
    encrypted_size,
    generate_key,
    parse_header,
    parse_key,
    read_key_file,
    write_key_file,
)
from hilum.storage.encrypted import EncryptedStorage
from hilum.storage.factory import MARKER, EncryptionConfigError, load_keyring, open_storage
from hilum.storage.filesystem import FilesystemStorage
from hilum.storage.rekey import area_status, encrypt_existing, rotate
from hilum.storage.settings import EncryptionSettings
from test_dicomweb_support import make_client

SIZES = [0, 1, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 3 * SEGMENT_SIZE, 5_000_003]


# -- helpers --------------------------------------------------------------------------
@pytest.fixture
def key() -> MasterKey:
    return generate_key()


def area(root: Path, *keys: MasterKey, encrypt: bool = True, **kwargs: bool) -> EncryptedStorage:
    return EncryptedStorage(
        FilesystemStorage(root), KeyRing(keys[0] if keys else None, keys[1:]), encrypt=encrypt, **kwargs
    )


def put(storage: EncryptedStorage | FilesystemStorage, key: str, data: bytes) -> Path:
    staged = storage.staging_dir() / f"{random.getrandbits(64):x}.part"
    staged.write_bytes(data)
    storage.sync([storage.commit(staged, key)])
    assert not staged.exists(), "the staged plaintext is consumed"
    return storage.root / key


def read_all(storage: EncryptedStorage, key: str) -> bytes:
    with storage.open(key) as handle:
        return handle.read()


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


# -- the format ------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_round_trip_keeps_every_size_and_writes_only_ciphertext(tmp_path: Path, key: MasterKey,
                                                                 size: int) -> None:
    storage = area(tmp_path, key)
    data = random.randbytes(size)
    path = put(storage, f"aa/{size}.dcm", data)
    assert path.stat().st_size == encrypted_size(size)
    on_disk = path.read_bytes()
    assert on_disk.startswith(MAGIC)
    if size >= 64:
        assert data[:64] not in on_disk and data[-64:] not in on_disk
    assert read_all(storage, f"aa/{size}.dcm") == data
    assert storage.stat(f"aa/{size}.dcm").size == size  # the plaintext size, as indexed
    assert storage.local_path(f"aa/{size}.dcm") is None
    header = parse_header(on_disk[:HEADER_SIZE], "test")
    assert header.plaintext_length == size and header.key_ids() == [key.hex_id]


def test_random_access_decrypts_only_what_is_asked(tmp_path: Path, key: MasterKey) -> None:
    storage = area(tmp_path, key)
    data = random.randbytes(4 * SEGMENT_SIZE + 123)
    put(storage, "x/big.dcm", data)
    rng = random.Random(5)
    with storage.open("x/big.dcm") as handle:
        assert handle.seekable() and handle.seek(0, io.SEEK_END) == len(data)
        for _ in range(300):
            start = rng.randrange(len(data) + 10)
            length = rng.choice([0, 1, 7, SEGMENT_SIZE - 1, SEGMENT_SIZE, 2 * SEGMENT_SIZE + 5, 10**7])
            handle.seek(start)
            assert handle.read(length) == data[start : start + length]
            assert handle.tell() == min(len(data), start + length) or start > len(data)
        handle.seek(-10, io.SEEK_END)
        assert handle.read() == data[-10:]
        buffer = bytearray(100)
        handle.seek(SEGMENT_SIZE - 50)
        assert handle.readinto(buffer) == 100 and bytes(buffer) == data[SEGMENT_SIZE - 50 : SEGMENT_SIZE + 50]
    start, length = SEGMENT_SIZE * 2 - 3, SEGMENT_SIZE + 9
    assert b"".join(storage.open_range("x/big.dcm", start, length)) == data[start : start + length]


def test_a_damaged_segment_fails_loudly_and_only_where_it_is_read(tmp_path: Path, key: MasterKey) -> None:
    storage = area(tmp_path, key)
    data = random.randbytes(3 * SEGMENT_SIZE)
    path = put(storage, "t/seg.dcm", data)
    flip(path, HEADER_SIZE + (SEGMENT_SIZE + TAG_SIZE) + 1000)  # inside segment 1
    with storage.open("t/seg.dcm") as handle:
        assert handle.read(SEGMENT_SIZE) == data[:SEGMENT_SIZE]  # segment 0 is intact
        with pytest.raises(StorageIntegrityError, match="segment 1 fails authentication"):
            handle.read(10)
        handle.seek(2 * SEGMENT_SIZE)
        assert handle.read() == data[2 * SEGMENT_SIZE :]
    with pytest.raises(StorageIntegrityError):
        read_all(storage, "t/seg.dcm")


@pytest.mark.parametrize("where", ["magic", "version", "length", "file id", "nonce prefix", "reserved",
                                   "key id", "wrapped key", "tag"])
def test_a_damaged_header_or_tag_is_refused(tmp_path: Path, key: MasterKey, where: str) -> None:
    storage = area(tmp_path, key)
    path = put(storage, "t/h.dcm", random.randbytes(1000))
    offset = {"magic": 1, "version": 8, "length": 16, "file id": 30, "nonce prefix": 42, "reserved": 50,
              "key id": SLOT_OFFSETS[0] + 3, "wrapped key": SLOT_OFFSETS[0] + 20,
              "tag": path.stat().st_size - 1}[where]
    flip(path, offset)
    # Never the bytes: an error (a file whose magic is gone reads as a non-DICOM plaintext file
    # only when plaintext is allowed; refused otherwise).
    strict = area(tmp_path, key, allow_plaintext=False)
    with pytest.raises(StorageIntegrityError):
        read_all(strict, "t/h.dcm")
    if where != "magic":
        with pytest.raises(StorageIntegrityError):
            read_all(storage, "t/h.dcm")


def test_truncation_extension_and_swapped_segments_are_detected(tmp_path: Path, key: MasterKey) -> None:
    storage = area(tmp_path, key)
    data = random.randbytes(3 * SEGMENT_SIZE)
    sealed = SEGMENT_SIZE + TAG_SIZE
    for name, change in {
        "cut-a-byte": lambda b: b[:-1],
        "cut-a-segment": lambda b: b[:-sealed],
        "extended": lambda b: b + b"\0" * 16,
        "swapped": lambda b: b[:HEADER_SIZE] + b[HEADER_SIZE + sealed : HEADER_SIZE + 2 * sealed]
        + b[HEADER_SIZE : HEADER_SIZE + sealed] + b[HEADER_SIZE + 2 * sealed :],
    }.items():
        path = put(storage, f"t/{name}.dcm", data)
        path.write_bytes(change(path.read_bytes()))
        with pytest.raises(StorageIntegrityError):
            read_all(storage, f"t/{name}.dcm")
    # A segment moved from another file of the same size (and its own header): refused.
    one, other = put(storage, "t/one.dcm", data), put(storage, "t/other.dcm", random.randbytes(len(data)))
    mixed = bytearray(one.read_bytes())
    mixed[HEADER_SIZE + sealed : HEADER_SIZE + 2 * sealed] = other.read_bytes()[
        HEADER_SIZE + sealed : HEADER_SIZE + 2 * sealed]
    one.write_bytes(bytes(mixed))
    with pytest.raises(StorageIntegrityError):
        read_all(storage, "t/one.dcm")
    # A whole file copied over another one (a valid file, stored under another name): refused.
    first, second = put(storage, "t/first.dcm", data), put(storage, "t/second.dcm", data[::-1])
    second.write_bytes(first.read_bytes())
    with pytest.raises(StorageIntegrityError, match="not the one stored under this name"):
        read_all(storage, "t/second.dcm")
    # The key slot of another file does not open this one.
    victim = put(storage, "t/victim.dcm", data)
    donor = put(storage, "t/donor.dcm", data)
    swapped = bytearray(victim.read_bytes())
    slot = slice(SLOT_OFFSETS[0], SLOT_OFFSETS[0] + 64)
    swapped[slot] = donor.read_bytes()[slot]
    victim.write_bytes(bytes(swapped))
    with pytest.raises(StorageIntegrityError, match="does not unwrap"):
        read_all(storage, "t/victim.dcm")


def test_a_wrong_key_is_an_error_naming_the_key_never_garbage(tmp_path: Path, key: MasterKey) -> None:
    put(area(tmp_path, key), "k/a.dcm", b"DICM" * 1000)
    stranger = generate_key()
    with pytest.raises(StorageKeyError, match=f"under master key {key.hex_id}.*not configured"):
        read_all(area(tmp_path, stranger), "k/a.dcm")
    # Forged: another key's material under the right key id is a damaged header, not data.
    forged = MasterKey(stranger.secret)
    object.__setattr__(forged, "key_id", key.key_id)
    with pytest.raises(StorageIntegrityError, match="does not unwrap"):
        read_all(area(tmp_path, forged), "k/a.dcm")
    # Without any key: the plain area refuses encrypted files rather than serve ciphertext.
    plain = FilesystemStorage(tmp_path)
    with pytest.raises(StorageKeyError, match="no master key is configured"):
        plain.open("k/a.dcm")
    assert plain.local_path("k/a.dcm") is None


def test_plaintext_files_of_a_mixed_area(tmp_path: Path, key: MasterKey) -> None:
    plain = FilesystemStorage(tmp_path)
    put(plain, "p/old.dcm", b"old plaintext")
    storage = area(tmp_path, key)
    put(storage, "p/new.dcm", b"new data")
    assert read_all(storage, "p/old.dcm") == b"old plaintext"
    assert storage.stat("p/old.dcm").size == len(b"old plaintext")
    with pytest.raises(StorageIntegrityError, match="allow_plaintext"):
        read_all(area(tmp_path, key, allow_plaintext=False), "p/old.dcm")
    status = area_status(storage)
    assert (status.files, status.plaintext, dict(status.by_key)) == (2, 1, {key.hex_id: 1})
    report = encrypt_existing(storage)
    assert (report.encrypted, report.already, report.failed) == (1, 1, [])
    assert (tmp_path / "p/old.dcm").read_bytes().startswith(MAGIC)
    assert read_all(area(tmp_path, key, allow_plaintext=False), "p/old.dcm") == b"old plaintext"
    assert [p.name for p in plain.staging_dir().iterdir()] == []


def test_stored_file_reads_through_the_area(tmp_path: Path, key: MasterKey) -> None:
    storage = area(tmp_path, key)
    put(storage, "s/a.dcm", b"0123456789")
    source = StoredFile(storage, "s/a.dcm")
    assert source.exists() and source.read_bytes() == b"0123456789" and source.name == "a.dcm"
    with source.open("rb") as handle:
        handle.seek(5)
        assert handle.read(2) == b"56"


# -- keys -------------------------------------------------------------------------------
def test_key_files_and_variables(tmp_path: Path, key: MasterKey) -> None:
    path = tmp_path / "master.key"
    write_key_file(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_key_file(path).secret == key.secret
    with pytest.raises(FileExistsError):
        write_key_file(path, generate_key())
    (tmp_path / "hex.key").write_text(key.secret.hex() + "\n")
    (tmp_path / "raw.key").write_bytes(key.secret if not key.secret.isascii() else bytes(32))
    assert read_key_file(tmp_path / "hex.key").key_id == key.key_id
    assert len(read_key_file(tmp_path / "raw.key").secret) == 32
    (tmp_path / "bad.key").write_text("not a key\n")
    (tmp_path / "two.key").write_text(f"{key.secret.hex()}\n{key.secret.hex()}\n")
    config = EncryptionSettings(enabled=True, key_file=str(tmp_path / "bad.key"))
    with pytest.raises(EncryptionConfigError, match=r"bad\.key: not a master key"):
        load_keyring(config, required=True)
    with pytest.raises(EncryptionConfigError, match="expected one key line"):
        load_keyring(EncryptionSettings(key_file=str(tmp_path / "two.key")), required=True)
    with pytest.raises(EncryptionConfigError, match="cannot read the master key file"):
        load_keyring(EncryptionSettings(key_file=str(tmp_path / "missing.key")), required=True)
    with pytest.raises(EncryptionConfigError, match=r"no master key.*HILUM_MASTER_KEY is not set"):
        load_keyring(EncryptionSettings(enabled=True), required=True, environ={})
    other = generate_key()
    import base64

    ring = load_keyring(EncryptionSettings(enabled=True), required=True, environ={
        "HILUM_MASTER_KEY": f"{base64.b64encode(key.secret).decode()},{other.secret.hex()}"})
    assert ring.current is not None and ring.current.key_id == key.key_id
    assert ring.ids() == [key.hex_id, other.hex_id]
    assert parse_key(base64.urlsafe_b64encode(key.secret).decode().rstrip("="), "x").key_id == key.key_id


def _settings(tmp_path: Path, **encryption: object) -> Settings:
    return load_settings(None, data_dir=tmp_path / "data", storage={"encryption": encryption})


def test_start_up_refuses_unusable_encryption_settings(tmp_path: Path, key: MasterKey,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HILUM_MASTER_KEY", raising=False)
    with pytest.raises(EncryptionConfigError, match="enabled is true but there is no master key"):
        open_storage(_settings(tmp_path, enabled=True), startup=True)
    key_file = tmp_path / "k1.key"
    write_key_file(key_file, key)
    storage = open_storage(_settings(tmp_path, enabled=True, key_file=str(key_file)), startup=True)
    assert isinstance(storage, EncryptedStorage)
    marker = tmp_path / "data" / "storage" / MARKER
    assert key.hex_id in marker.read_text()
    assert MARKER not in list(storage.keys())
    # Encryption switched off without a key: the area holds encrypted files, so no start.
    with pytest.raises(EncryptionConfigError, match="holds files encrypted at rest"):
        open_storage(_settings(tmp_path), startup=True)
    # Off, but with the key: reads encrypted files, writes plaintext.
    decrypt_only = open_storage(_settings(tmp_path, key_file=str(key_file)))
    assert isinstance(decrypt_only, EncryptedStorage) and not decrypt_only.encrypt
    # A key that never encrypted anything here: a wrong key file.
    wrong = tmp_path / "wrong.key"
    write_key_file(wrong, generate_key())
    with pytest.raises(EncryptionConfigError, match="wrong key file"):
        open_storage(_settings(tmp_path, enabled=True, key_file=str(wrong)), startup=True)
    # A new key with the old one as a previous key: accepted, and recorded.
    open_storage(_settings(tmp_path, enabled=True, key_file=str(wrong), previous_key_files=[str(key_file)]),
                 startup=True)
    assert read_key_file(wrong).hex_id in marker.read_text()


def test_hilum_serve_refuses_to_start_without_its_key(tmp_path: Path) -> None:
    env = {**os.environ, "HILUM_STORAGE__ENCRYPTION__ENABLED": "true",
           "HILUM_STORAGE__ENCRYPTION__KEY_FILE": str(tmp_path / "absent.key")}
    result = subprocess.run(
        [sys.executable, "-m", "hilum.cli", "serve", "--data-dir", str(tmp_path / "data"),
         "--dicom-port", str(free_port()), "--http-port", str(free_port())],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode != 0
    assert "cannot read the master key file" in result.stderr and "absent.key" in result.stderr


# -- rotation ---------------------------------------------------------------------------
def _fill(storage: EncryptedStorage, count: int, size: int = 3000) -> dict[str, bytes]:
    files = {}
    for n in range(count):
        data = random.randbytes(size + n)
        put(storage, f"r/{n % 7:02d}/{n}.dcm", data)
        files[f"r/{n % 7:02d}/{n}.dcm"] = data
    return files


def test_rotate_rewraps_without_touching_segments_and_retires_the_old_key(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    storage = area(tmp_path, old)
    files = _fill(storage, 20, size=2 * SEGMENT_SIZE)
    bodies = {k: (tmp_path / k).read_bytes()[HEADER_SIZE:] for k in files}
    put(FilesystemStorage(tmp_path), "r/plain.dcm", b"plain")
    report = rotate(storage, KeyRing(old), new, batch=6)
    assert (report.rotated, report.already, report.plaintext, report.failed) == (20, 0, 1, [])
    assert dict(report.from_keys) == {old.hex_id: 20}
    for name, data in files.items():
        assert (tmp_path / name).read_bytes()[HEADER_SIZE:] == bodies[name]  # pixel data untouched
        assert read_all(area(tmp_path, new), name) == data
        with pytest.raises(StorageKeyError):
            read_all(area(tmp_path, old), name)
        assert parse_header((tmp_path / name).read_bytes()[:HEADER_SIZE], name).key_ids() == [new.hex_id]
    again = rotate(storage, KeyRing(old), new)
    assert (again.rotated, again.already) == (0, 20)


def test_an_interrupted_rotation_resumes(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    storage = area(tmp_path, old)
    files = _fill(storage, 30)
    # Stopped between writing the new slots and clearing the old ones (a crash there).
    rotate(storage, KeyRing(old), new, batch=8, stop_after=12)
    status = area_status(area(tmp_path, old, new))
    assert sum(n for ids, n in status.by_key.items() if "+" in ids) >= 1  # two keys mid-rotation
    for name, data in files.items():  # every file opens with the keys given meanwhile
        assert read_all(area(tmp_path, old, new), name) == data
    # A torn write of a new slot in a file not reached yet: garbage in the slot being written.
    untouched = next(name for name in files if parse_header(
        (tmp_path / name).read_bytes()[:HEADER_SIZE], name).key_ids() == [old.hex_id])
    with (tmp_path / untouched).open("r+b") as handle:
        handle.seek(SLOT_OFFSETS[1])
        handle.write(new.key_id + os.urandom(20))
    assert read_all(area(tmp_path, old, new), untouched) == files[untouched]
    report = rotate(storage, KeyRing(old), new)
    assert report.failed == [] and report.rotated + report.already == 30
    for name, data in files.items():
        assert read_all(area(tmp_path, new), name) == data
        with pytest.raises(StorageKeyError):
            read_all(area(tmp_path, old), name)


def test_reads_during_an_online_rotation_never_fail(tmp_path: Path) -> None:
    """A server given both keys reads every file while `hilum keys rotate` rewrites slots."""
    import threading

    old, new = generate_key(), generate_key()
    files = _fill(area(tmp_path, old), 300, size=500)
    reader = area(tmp_path, new, old)
    errors: list[BaseException] = []
    done = threading.Event()

    def read_on() -> None:
        names = sorted(files)
        while not done.is_set():
            for name in names:
                try:
                    assert read_all(reader, name) == files[name]
                except BaseException as exc:  # reported by the test
                    errors.append(exc)

    thread = threading.Thread(target=read_on)
    thread.start()
    try:
        for _ in range(3):  # back and forth, so that reads meet many slot writes
            rotate(area(tmp_path, old), KeyRing(old), new, batch=16)
            rotate(area(tmp_path, new), KeyRing(new), old, batch=16)
    finally:
        done.set()
        thread.join()
    assert errors == []


def test_rotation_killed_at_any_moment_leaves_every_file_readable(tmp_path: Path) -> None:
    """`hilum keys rotate` SIGKILLed mid-way; every file opens with old or new key; a rerun finishes."""
    data_dir = tmp_path / "data"
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    old, new = generate_key(), generate_key()
    write_key_file(old_file, old)
    write_key_file(new_file, new)
    settings = load_settings(None, data_dir=data_dir,
                             storage={"encryption": {"enabled": True, "key_file": str(old_file)}})
    storage = open_storage(settings, startup=True)
    assert isinstance(storage, EncryptedStorage)
    files = _fill(storage, 1500, size=200)
    env = {**hilum_env(settings), "PYTHONUNBUFFERED": "1", "HILUM_STORAGE__ENCRYPTION__ENABLED": "true",
           "HILUM_STORAGE__ENCRYPTION__KEY_FILE": str(old_file)}
    command = [sys.executable, "-m", "hilum.cli", "keys", "rotate", "--new-key-file", str(new_file),
               "--data-dir", str(data_dir), "--batch", "64"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert process.stdout is not None
    for line in process.stdout:  # kill it once it has re-wrapped some batches
        if b"files re-wrapped" in line and int(line.split()[0]) >= 200:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the rotation finished before it could be killed"
    both = area(tmp_path / "data" / "storage", old, new)
    status = area_status(both, verify_all=True)
    assert status.damaged == [] and status.verified == 1500
    assert status.by_key[new.hex_id] >= 200 and status.by_key[old.hex_id] > 0
    for name, data in random.sample(sorted(files.items()), 100):
        assert read_all(both, name) == data
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failed" in done.stdout
    only_new = area(tmp_path / "data" / "storage", new)
    status = area_status(only_new, verify_all=True)
    assert dict(status.by_key) == {new.hex_id: 1500} and status.damaged == []
    assert rows_audited(settings, "hilum keys rotate")


def rows_audited(settings: Settings, text: str) -> bool:
    rows = query_rows(settings, "SELECT * FROM audit_records")
    return any(text in str(tuple(row)) for row in rows)


# -- end to end: a real server ----------------------------------------------------------------
def _key_env(key_file: Path, enabled: bool = True) -> dict[str, str]:
    return {"HILUM_STORAGE__ENCRYPTION__ENABLED": "true" if enabled else "false",
            "HILUM_STORAGE__ENCRYPTION__KEY_FILE": str(key_file)}


@pytest.fixture
def encrypted_server(settings: Settings, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RunningServer, Path]]:
    key_file = tmp_path / "k1.key"
    write_key_file(key_file, generate_key())
    for name, value in _key_env(key_file).items():
        monkeypatch.setenv(name, value)  # the server and every `hilum` command run here
    running = start_server(settings, tmp_path)
    try:
        yield running, key_file
    finally:
        stop_server(running)


def _http(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.settings.http.port}"


def test_the_archive_works_the_same_with_only_ciphertext_on_disk(
    encrypted_server: tuple[RunningServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, key_file = encrypted_server
    spec = StudySpec(patient_id="ENC-1", patient_name="SECRET^PATIENT", series=2, slices=3, size=128)
    files = write_study(spec, tmp_path / "study")
    by_uid = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
    out = dcmtk("storescu", "-aet", "STORESCU", *scp_args(server), *map(str, files))
    assert out.returncode == 0, out.stdout + out.stderr

    # -- on disk: ciphertext only --------------------------------------------------------
    stored = [p for p in server.settings.storage_dir.rglob("*.dcm") if ".staging" not in p.parts]
    assert len(stored) == 6
    pixel_sample = dcmread(files[0]).PixelData[1000:1064]
    for path in stored:
        body = path.read_bytes()
        assert body.startswith(MAGIC)
        assert b"SECRET^PATIENT" not in body and b"ENC-1" not in body and pixel_sample not in body
    for row in query_rows(server.settings, "SELECT storage_key, size_bytes FROM instances"):
        path = server.settings.storage_dir / row.storage_key  # the index keeps the plaintext size
        assert parse_header(path.read_bytes(), "x").plaintext_length == row.size_bytes
        assert path.stat().st_size == encrypted_size(row.size_bytes)

    # -- C-GET (getscu) and C-MOVE (movescu) give the data sets as sent ----------------------
    got = tmp_path / "getscu"
    got.mkdir()
    out = dcmtk("getscu", "-S", "-aet", "GETSCU", "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={spec.study_uid}", *scp_args(server))
    assert out.returncode == 0 and "E:" not in out.stdout + out.stderr, out.stdout + out.stderr
    received = {p.name.split(".", 1)[1]: p for p in got.iterdir()}
    assert set(received) == set(by_uid)
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(by_uid[uid])
    with dcmtk_storescp(tmp_path / "moved", "MOVEDEST", "+xa", "-B") as dest:
        server.hilum("ae", "add", "movedest", dest.ae_title, "127.0.0.1", str(dest.port))
        out = dcmtk("movescu", "-v", "-S", "-aet", "MOVESCU", "-aem", "MOVEDEST",
                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={spec.study_uid}",
                    *scp_args(server))
        assert "Received Final Move Response (Success)" in out.stdout + out.stderr, out.stdout + out.stderr
        moved = {p.name.split(".", 1)[1]: p for p in dest.received()}
        assert set(moved) == set(by_uid)
        for uid, path in moved.items():
            assert dataset_bytes(path) == dataset_bytes(by_uid[uid])
        for path in dest.received():
            path.unlink()

        # -- a store job (the jobs' send path) -------------------------------------------
        with httpx.Client(base_url=_http(server), timeout=30) as client:
            response = client.post("/api/v1/jobs", json={
                "kind": "store", "study_instance_uid": spec.study_uid, "destination": "movedest"})
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            wait_for(lambda: client.get(f"/api/v1/jobs/{job_id}").json()["state"] == "succeeded",
                     60, "the store job")
        sent = {p.name.split(".", 1)[1]: p for p in dest.received()}
        assert set(sent) == set(by_uid)
        for uid, path in sent.items():
            assert dataset_bytes(path) == dataset_bytes(by_uid[uid])

    # -- WADO-RS: instance, frames, rendered, bulk data; zip download ------------------------
    uid, original = next(iter(by_uid.items()))
    ds = dcmread(original)
    base = f"{_http(server)}/dicomweb/studies/{spec.study_uid}/series/{ds.SeriesInstanceUID}/instances/{uid}"
    response = httpx.get(base, headers={"Accept": "application/dicom"}, timeout=30)
    assert response.status_code == 200
    assert dcmread(io.BytesIO(response.content)).PixelData == ds.PixelData
    response = httpx.get(f"{base}/frames/1", headers={"Accept": "application/octet-stream"}, timeout=30)
    assert response.status_code == 200 and response.content == ds.PixelData
    response = httpx.get(f"{base}/rendered", headers={"Accept": "image/png"}, timeout=30)
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    response = httpx.get(f"{base}/bulkdata/7fe00010", headers={"Accept": "application/octet-stream"},
                         timeout=30)
    assert response.status_code == 200 and response.content == ds.PixelData
    response = httpx.get(f"{_http(server)}/api/v1/studies/{spec.study_uid}/archive", timeout=60)
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        members = [n for n in archive.namelist() if not n.endswith("DICOMDIR")]
        assert len(members) == 6
        for name in members:
            member = dcmread(io.BytesIO(archive.read(name)))
            assert member.PixelData == dcmread(by_uid[str(member.SOPInstanceUID)]).PixelData

    # -- a compressed multi-frame instance: frames as stored and decoded, C-GET decompressed --
    rle_path = Path(str(get_testdata_file("emri_small_RLE.dcm")))
    rle, native = dcmread(rle_path), dcmread(str(get_testdata_file("emri_small.dcm")))
    ae = scu_ae("PYSTORE")
    ae.add_requested_context(rle.SOPClassUID, [rle.file_meta.TransferSyntaxUID])
    assoc = associate(ae, server)
    try:
        with chunked_send():
            assert assoc.send_c_store(rle_path).Status == 0x0000
    finally:
        assoc.release()
    client, _ = make_client(server)
    rle_uids = (rle.StudyInstanceUID, rle.SeriesInstanceUID, rle.SOPInstanceUID)
    size = len(native.PixelData) // 10
    octets = client.retrieve_instance_frames(*rle_uids, [1, 7], media_types=("application/octet-stream",))
    assert octets == [native.PixelData[:size], native.PixelData[6 * size : 7 * size]]
    as_stored = client.retrieve_instance_frames(*rle_uids, [4], media_types=(("image/dicom-rle", "*"),))
    assert as_stored == [list(generate_frames(rle.PixelData, number_of_frames=10))[3]]
    got_rle = tmp_path / "getscu-rle"
    got_rle.mkdir()
    out = dcmtk("getscu", "-S", "-aet", "GETSCU", "-od", str(got_rle), "-k", "QueryRetrieveLevel=IMAGE",
                "-k", f"StudyInstanceUID={rle.StudyInstanceUID}",
                "-k", f"SeriesInstanceUID={rle.SeriesInstanceUID}",
                "-k", f"SOPInstanceUID={rle.SOPInstanceUID}", *scp_args(server))
    assert out.returncode == 0, out.stdout + out.stderr
    [decompressed] = list(got_rle.iterdir())
    assert (dcmread(decompressed).pixel_array == native.pixel_array).all()

    # -- `hilum export` reads through the same keys ----------------------------------------
    out_dir = tmp_path / "export"
    server.hilum("export", "--study", spec.study_uid, "--out", str(out_dir))
    exported = {str(dcmread(p).SOPInstanceUID): p for p in out_dir.rglob("*") if p.is_file()
                and p.name != "DICOMDIR"}
    assert set(exported) == set(by_uid)

    # -- a damaged file: WADO-RS 500 problem, C-GET failed sub-operation -------------------
    victim = stored[0]
    victim_uid = _sop_of(server, victim, key_file)
    flip(victim, HEADER_SIZE + 10)
    victim_ds = dcmread(by_uid[victim_uid], stop_before_pixels=True)
    url = (f"{_http(server)}/dicomweb/studies/{spec.study_uid}/series/{victim_ds.SeriesInstanceUID}"
           f"/instances/{victim_uid}")
    response = httpx.get(url, headers={"Accept": "application/dicom"}, timeout=30)
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "fails authentication" in response.json()["detail"]
    got_bad = tmp_path / "getscu-bad"
    got_bad.mkdir()
    out = dcmtk("getscu", "-v", "-S", "-aet", "GETSCU", "-od", str(got_bad), "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={spec.study_uid}", *scp_args(server))
    text = out.stdout + out.stderr
    assert len(list(got_bad.iterdir())) == 5, text  # the others still come
    assert "Warning" in text or "0xb000" in text.lower(), text

    # -- rotation: refused while this server (without the new key) runs ------------------------
    new_file = tmp_path / "k2.key"
    write_key_file(new_file, generate_key())
    refused = server.hilum("keys", "rotate", "--new-key-file", str(new_file), check=False)
    assert refused.returncode == 1 and "is running" in refused.stderr, refused.stderr


def _sop_of(server: RunningServer, path: Path, key_file: Path) -> str:
    root = server.settings.storage_dir
    with area(root, read_key_file(key_file)).open(str(path.relative_to(root))) as handle:
        return str(dcmread(handle, stop_before_pixels=True).SOPInstanceUID)


def test_rotate_against_a_server_data_dir_then_serve_with_the_new_key(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    write_key_file(old_file, generate_key())
    write_key_file(new_file, generate_key())
    new_id = read_key_file(new_file).hex_id
    for name, value in _key_env(old_file).items():
        monkeypatch.setenv(name, value)
    spec = StudySpec(patient_id="ENC-ROT", series=1, slices=4)
    files = write_study(spec, tmp_path / "study")
    run_hilum(settings, "import", str(tmp_path / "study"))  # encrypted under the old key
    status = run_hilum(settings, "keys", "status")
    assert "4 stored files: 4 encrypted, 0 plaintext" in status.stdout, status.stdout

    # Offline rotation (no server), to a key not configured yet.
    rotated = run_hilum(settings, "keys", "rotate", "--new-key-file", str(new_file))
    assert "re-wrapped 4 file(s)" in rotated.stdout and "0 failed" in rotated.stdout, rotated.stdout
    assert "Now configure" in rotated.stdout
    assert rows_audited(settings, "hilum keys rotate")

    # The old key alone now opens nothing: export fails loudly.
    failed = run_hilum(settings, "export", "--study", spec.study_uid, "--out", str(tmp_path / "x"),
                       check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert f"encrypted under master key {new_id}, which is not configured" in failed.stderr, failed.stderr

    # Serve with the new key: everything is retrieved as stored.
    for name, value in _key_env(new_file).items():
        monkeypatch.setenv(name, value)
    status = run_hilum(settings, "keys", "status", "--verify")
    assert "verified (decrypted and authenticated): 4" in status.stdout, status.stdout
    server = start_server(settings, tmp_path)
    try:
        got = tmp_path / "got"
        got.mkdir()
        out = dcmtk("getscu", "-S", "-aet", "GETSCU", "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={spec.study_uid}", *scp_args(server))
        assert out.returncode == 0 and len(list(got.iterdir())) == 4, out.stdout + out.stderr
        originals = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
        for path in got.iterdir():
            assert dataset_bytes(path) == dataset_bytes(originals[path.name.split(".", 1)[1]])
        # New files go in under the new key (C-STORE and STOW-RS); status says so.
        more = write_study(StudySpec(patient_id="ENC-ROT2", slices=2), tmp_path / "more")
        assert dcmtk("storescu", *scp_args(server), *map(str, more)).returncode == 0
        stowed = stow_study(_http(server), StudySpec(patient_id="ENC-STOW", patient_name="STOW^SECRET",
                                                      slices=2))
        status = server.hilum("keys", "status").stdout
        assert "8 stored files: 8 encrypted, 0 plaintext" in status and f"8  under {new_id}" in status, status
        for path in server.settings.storage_dir.rglob("*.dcm"):
            assert b"STOW^SECRET" not in path.read_bytes()
        url = (f"{_http(server)}/dicomweb/studies/{stowed[0].StudyInstanceUID}/series/"
               f"{stowed[0].SeriesInstanceUID}/instances/{stowed[0].SOPInstanceUID}")
        response = httpx.get(url, headers={"Accept": "application/dicom"}, timeout=30)
        assert response.status_code == 200
        assert dcmread(io.BytesIO(response.content)).PixelData == stowed[0].PixelData
    finally:
        stop_server(server)
    # A key unrelated to this archive: `hilum serve` refuses to start.
    stranger = tmp_path / "stranger.key"
    write_key_file(stranger, generate_key())
    monkeypatch.setenv("HILUM_STORAGE__ENCRYPTION__KEY_FILE", str(stranger))
    result = subprocess.run(
        [sys.executable, "-m", "hilum.cli", "serve", "--data-dir", str(settings.data_dir),
         "--dicom-port", str(free_port()), "--http-port", str(free_port())],
        capture_output=True, text=True, env=hilum_env(settings), timeout=60,
    )
    assert result.returncode != 0 and "wrong key file" in result.stderr, result.stderr
