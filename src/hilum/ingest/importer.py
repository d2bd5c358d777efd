"""``hilum import``: folders (recursive), zip files and DICOMDIR media, through ingest."""

from __future__ import annotations

import os
import shutil
import threading
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet

from hilum.config import DuplicatePolicy
from hilum.domain.errors import IngestFailure, IngestStatus
from hilum.ingest.service import IngestService

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ImportItem:
    """One candidate file: a path on disk, or a member of a zip archive."""

    label: str
    path: Path | None = None
    archive: Path | None = None
    member: str | None = None

    @contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if self.path is not None:
            with self.path.open("rb") as handle:
                yield handle
            return
        assert self.archive is not None and self.member is not None
        with zipfile.ZipFile(self.archive) as archive, archive.open(self.member) as member:
            yield member


@dataclass
class ImportSummary:
    accepted: int = 0
    already_stored: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0

    @property
    def reasons(self) -> Counter[str]:
        return Counter(reason.split(":")[0] for _, reason in self.rejected)


def discover(paths: list[Path]) -> Iterator[ImportItem]:
    """Every file under ``paths``; DICOMDIRs expand to the files they reference."""
    seen: set[Path] = set()
    for root in paths:
        if not root.exists():
            yield ImportItem(label=str(root), path=root)  # reported as missing
            continue
        if root.is_file():
            yield from _expand_file(root, seen)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            # A DICOMDIR first, so its files are read through it.
            names = sorted(filenames, key=lambda n: (n.upper() != "DICOMDIR", n))
            for name in names:
                yield from _expand_file(Path(dirpath) / name, seen)


def _expand_file(path: Path, seen: set[Path]) -> Iterator[ImportItem]:
    resolved = path.resolve()
    if resolved in seen:
        return
    seen.add(resolved)
    if path.name.upper() == "DICOMDIR":
        try:
            fileset = FileSet(dcmread(path))
        except Exception as exc:
            yield ImportItem(label=f"{path} (DICOMDIR unreadable: {exc})", path=path)
            return
        for instance in fileset:
            member = Path(instance.path)
            if member.resolve() not in seen:
                seen.add(member.resolve())
                yield ImportItem(label=str(member), path=member)
        return
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir() or info.filename.upper().endswith("DICOMDIR"):
                    continue
                yield ImportItem(label=f"{path}!{info.filename}", archive=path, member=info.filename)
        return
    yield ImportItem(label=str(path), path=path)


class Importer:
    def __init__(self, ingest: IngestService, *, threads: int = 4) -> None:
        self.ingest = ingest
        self.threads = threads
        self._lock = threading.Lock()

    def run(
        self,
        paths: list[Path],
        *,
        on_item: Callable[[ImportItem, str, int], None] | None = None,
    ) -> ImportSummary:
        summary = ImportSummary()

        def work(item: ImportItem) -> None:
            outcome, size = self._one(item)
            with self._lock:
                if outcome == "accepted":
                    summary.accepted += 1
                    summary.bytes += size
                elif outcome == "already stored":
                    summary.already_stored += 1
                else:
                    summary.rejected.append((item.label, outcome))
            if on_item:
                on_item(item, outcome, size)

        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            # Bounded in-flight work: never hold the whole list of futures.
            pending: list = []
            for item in discover(paths):
                pending.append(pool.submit(work, item))
                if len(pending) >= self.threads * 4:
                    pending.pop(0).result()
            for future in pending:
                future.result()
        return summary

    def _one(self, item: ImportItem) -> tuple[str, int]:
        if item.path is not None and not item.path.is_file():
            return "missing: no such file", 0
        try:
            with item.open() as handle:
                try:
                    header = dcmread(handle, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                    uid = str(header.get("SOPInstanceUID", "") or "")
                except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError):
                    uid = ""
            # Skipping what is stored makes re-runs cheap; under the replace or
            # reject policies the write path must see the copy and decide.
            if uid and self.ingest.duplicate_policy is DuplicatePolicy.IGNORE and self.ingest.is_stored(uid):
                return "already stored", 0
            staged = self._stage(item)
            size = staged.stat().st_size
            result = self.ingest.ingest_staged(staged, source="import")
        except IngestFailure as failure:
            return f"{failure.status.reason}: {failure.message}", 0
        except OSError as exc:
            return f"unreadable: {exc}", 0
        if result.status is IngestStatus.ALREADY_STORED:
            return "already stored", 0
        return "accepted", size

    def _stage(self, item: ImportItem) -> Path:
        fd, staged = self.ingest.new_staging_file()
        try:
            with os.fdopen(fd, "wb") as out, item.open() as src:
                shutil.copyfileobj(src, out, _CHUNK)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged
