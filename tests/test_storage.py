"""FilesystemStorage: atomic commits, key validation, reads, deletes, recovery."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hilum.storage.base import CommitReceipt, ObjectNotFound, StorageError
from hilum.storage.filesystem import FilesystemStorage


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    # The portable mode; syncfs mode has its own test below.
    return FilesystemStorage(tmp_path / "storage", sync_mode="fsync")


def stage(storage: FilesystemStorage, data: bytes) -> Path:
    path = storage.staging_dir() / f"{os.urandom(6).hex()}.part"
    path.write_bytes(data)
    return path


def test_layout(storage: FilesystemStorage, tmp_path: Path) -> None:
    assert storage.root == (tmp_path / "storage").resolve()
    assert storage.staging_dir().is_dir()
    assert storage.staging_dir().parent == storage.root  # same filesystem: rename is atomic
    assert list(storage.keys()) == []


def test_commit_moves_the_staged_file_under_its_key(storage: FilesystemStorage) -> None:
    staged = stage(storage, b"DICM" * 1000)
    receipt = storage.commit(staged, "ab/cd/study/one.dcm")
    assert isinstance(receipt, CommitReceipt)
    assert receipt.key == "ab/cd/study/one.dcm"
    assert not staged.exists()
    target = storage.root / "ab/cd/study/one.dcm"
    assert target.read_bytes() == b"DICM" * 1000
    # Every directory whose entries changed is to be fsync'd: the new ones' parents too.
    assert set(receipt.pending) == {
        str(storage.root / "ab/cd/study"),
        str(storage.root / "ab/cd"),
        str(storage.root / "ab"),
        str(storage.root),
    }
    assert storage.exists("ab/cd/study/one.dcm")
    assert storage.stat("ab/cd/study/one.dcm").size == 4000
    assert list(storage.keys()) == ["ab/cd/study/one.dcm"]
    # A second file in the same directory: only that directory is pending.
    receipt = storage.commit(stage(storage, b"x"), "ab/cd/study/two.dcm")
    assert receipt.pending == (str(storage.root / "ab/cd/study"),)
    assert list(storage.staging_dir().iterdir()) == []


def test_commit_is_a_single_rename(
    storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No copy-then-delete: the only move is one os.replace from staging to the target."""
    calls: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        calls.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    staged = stage(storage, b"payload")
    storage.commit(staged, "k/file.dcm")
    assert calls == [(str(staged), str(storage.root / "k/file.dcm"))]


def test_commit_replaces_an_existing_key_atomically(storage: FilesystemStorage) -> None:
    storage.commit(stage(storage, b"old"), "k/file.dcm")
    storage.commit(stage(storage, b"new"), "k/file.dcm")
    assert b"".join(storage.open_range("k/file.dcm", 0, 100)) == b"new"


def test_a_failed_commit_leaves_no_target(storage: FilesystemStorage, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        storage.commit(storage.staging_dir() / "missing.part", "k/file.dcm")
    assert not storage.exists("k/file.dcm")


@pytest.mark.parametrize(
    "key",
    [
        "../escape.dcm",
        "a/../../escape.dcm",
        "a/b/../../../escape.dcm",
        "/etc/passwd",
        "/tmp/x.dcm",
        ".staging/x.part",
        "..",
        "",
        "a\\..\\b",
    ],
)
def test_bad_keys_are_refused(storage: FilesystemStorage, tmp_path: Path, key: str) -> None:
    staged = stage(storage, b"data")
    with pytest.raises(StorageError):
        storage.commit(staged, key)
    assert staged.exists()  # nothing moved
    for operation in (storage.open, storage.delete, storage.exists, storage.stat,
                      storage.local_path):
        with pytest.raises(StorageError):
            operation(key)
    with pytest.raises(StorageError):
        list(storage.open_range(key, 0, 10))
    assert not (tmp_path / "escape.dcm").exists()


def test_open_and_open_range(storage: FilesystemStorage) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB: more than one read chunk
    storage.commit(stage(storage, data), "r/obj")
    with storage.open("r/obj") as handle:
        assert handle.read() == data
    assert b"".join(storage.open_range("r/obj", 0, len(data))) == data
    assert b"".join(storage.open_range("r/obj", 10, 5)) == data[10:15]
    start = (1 << 20) - 3  # across a chunk boundary
    assert b"".join(storage.open_range("r/obj", start, 1 << 20)) == data[start : start + (1 << 20)]
    # Past the end: as much as there is, then nothing.
    assert b"".join(storage.open_range("r/obj", len(data) - 4, 100)) == data[-4:]
    assert b"".join(storage.open_range("r/obj", len(data) + 10, 100)) == b""
    assert b"".join(storage.open_range("r/obj", 0, 0)) == b""
    assert storage.local_path("r/obj") == storage.root / "r/obj"
    with pytest.raises(ObjectNotFound):
        storage.open("r/missing")
    with pytest.raises(ObjectNotFound):
        list(storage.open_range("r/missing", 0, 1))
    with pytest.raises(ObjectNotFound):
        storage.stat("r/missing")


def test_delete(storage: FilesystemStorage) -> None:
    storage.commit(stage(storage, b"1"), "d/one")
    storage.commit(stage(storage, b"2"), "d/two")
    storage.delete("d/one")
    assert not storage.exists("d/one")
    assert storage.exists("d/two")
    storage.delete("d/one")  # deleting what is gone is not an error
    storage.delete("never/was")
    assert list(storage.keys()) == ["d/two"]


def test_keys_skip_staging(storage: FilesystemStorage) -> None:
    stage(storage, b"in flight")
    storage.commit(stage(storage, b"a"), "x/a")
    storage.commit(stage(storage, b"b"), "x/y/b")
    storage.commit(stage(storage, b"c"), "top")
    assert sorted(storage.keys()) == ["top", "x/a", "x/y/b"]


def test_recover_clears_staging(storage: FilesystemStorage, tmp_path: Path) -> None:
    storage.commit(stage(storage, b"kept"), "k/kept")
    for i in range(3):
        stage(storage, b"partial" * i)
    assert storage.recover() == 3
    assert list(storage.staging_dir().iterdir()) == []
    assert storage.exists("k/kept")  # committed files are never touched
    assert storage.recover() == 0
    # A new instance on the same root recovers at start-up the same way.
    stage(storage, b"left by a crash")
    assert FilesystemStorage(tmp_path / "storage").recover() == 1
    assert list(storage.staging_dir().iterdir()) == []


def test_sync_fsyncs_the_pending_directories(
    storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    receipts = [
        storage.commit(stage(storage, b"1"), "s/a/one"),
        storage.commit(stage(storage, b"2"), "s/a/two"),
        storage.commit(stage(storage, b"3"), "s/b/three"),
    ]
    synced: list[str] = []
    real_fsync = os.fsync
    opened: dict[int, str] = {}
    real_open = os.open

    def spy_open(path: str, flags: int, *args: int) -> int:
        fd = real_open(path, flags, *args)
        opened[fd] = str(path)
        return fd

    def spy_fsync(fd: int) -> None:
        synced.append(opened.get(fd, "?"))
        real_fsync(fd)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    storage.sync(receipts)
    # Every file's content, then each directory once, deepest first (a new
    # directory before its parent's entry).
    files = [p for p in synced if Path(p).is_file()]
    assert sorted(files) == sorted(str(storage.root / r.key) for r in receipts)
    synced = [p for p in synced if not Path(p).is_file()]
    assert len(synced) == len(set(synced))
    assert set(synced) == {d for r in receipts for d in r.pending}
    assert synced.index(str(storage.root / "s/a")) < synced.index(str(storage.root / "s"))
    assert synced.index(str(storage.root / "s")) < synced.index(str(storage.root))
    storage.sync([])  # nothing to do: fine


def test_sync_reports_a_vanished_directory(storage: FilesystemStorage) -> None:
    receipt = CommitReceipt(key="gone/x", pending=(str(storage.root / "gone"),))
    with pytest.raises(OSError):
        storage.sync([receipt])


def test_syncfs_mode_makes_a_batch_durable_with_one_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hilum.storage import filesystem

    storage = FilesystemStorage(tmp_path / "storage")
    if storage.sync_mode != "syncfs":
        pytest.skip("no syncfs(2) on this platform")
    calls: list[int] = []
    real = filesystem._SYNCFS
    monkeypatch.setattr(filesystem, "_SYNCFS", lambda fd: calls.append(fd) or real(fd))
    receipts = [storage.commit(stage(storage, bytes([i])), f"s/{i}/x") for i in range(5)]
    storage.sync(receipts)
    assert len(calls) == 1
    storage.sync([])
    assert len(calls) == 1  # nothing to do, no flush
    assert all(storage.exists(f"s/{i}/x") for i in range(5))


def test_unknown_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync_mode"):
        FilesystemStorage(tmp_path / "storage", sync_mode="maybe")


def test_periodic_recover_keeps_transfers_in_progress(storage: FilesystemStorage) -> None:
    old = stage(storage, b"abandoned")
    fresh = stage(storage, b"arriving")
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert storage.recover(older_than=600) == 1
    assert not old.exists() and fresh.exists()
