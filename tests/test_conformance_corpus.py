"""Conformance corpus: pydicom's and pydicom-data's test files in, and back out unchanged.

Every Part 10 file shipped by pydicom (``pydicom/data/test_files``) and by the
installed pydicom-data package that is a storage SOP instance goes in by
C-STORE in its own transfer syntax and comes back by C-GET in the same
transfer syntax; the data set bytes (everything after the File Meta
Information) must be identical on the wire and on disk.

Many files are variants of one instance (the same SOP Instance UID in another
transfer syntax: ``MR_small_RLE.dcm``, ``MR_small_bigendian.dcm``...). They
are sent in rounds (round k = the k-th variant of every instance) to a server
with ``duplicate_policy = "replace"``, so every variant is stored and
retrieved in turn and every shipped transfer syntax is covered.

Files pydicom's data manager would *download* are not used (the tests run
offline); only files installed on disk are.
"""

from __future__ import annotations

import collections
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import data_manager
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom.sop_class import _STORAGE_CLASSES

from conftest import RunningServer, start_server, stop_server
from dimse_util import (
    GetSession,
    associate,
    chunked_send,
    dataset_bytes,
    dcmtk,
    dcmtk_storescp,
    identifier,
    instance_row,
    scu_ae,
    snapshot,
    stored_path,
)
from hilum.config import Settings

STORAGE_SOP_CLASSES = frozenset(_STORAGE_CLASSES.values())

# Files that are storage instances but must be refused: the DIMSE status Hilum
# must answer, and why. A refused file leaves the index and storage unchanged
# (a variant of a valid file leaves the previous round's variant in place).
EXPECTED_REFUSED: dict[str, tuple[int, str]] = {
    "MR_truncated.dcm": (0xC000, "truncated: Pixel Data ends past the end of the file"),
    "rtplan_truncated.dcm": (0xC000, "truncated: a sequence ends past the end of the file"),
    "emri_small_jpeg_2k_lossless_too_short.dcm": (
        0xC000, "truncated: the encapsulated Pixel Data has no sequence delimiter"
    ),
    "bad_sequence.dcm": (0xA900, "SOP Instance UID is a hex digest, not a valid UID"),
}

# What pydicom 3.0 + pydicom-data 1.0 ship on disk (pydicom's data manager lists
# a few more files that it would download; these tests run offline).
# (Enhanced MR is shipped only as the truncated *_too_short.dcm, which is refused.)
MIN_TRANSFER_SYNTAXES = 11
MIN_SOP_CLASSES = 14


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    # The File Meta Information disagrees with the data set's SOP Class / Instance
    # UID; such files are sent from a copy with the meta corrected (data set untouched),
    # since the C-STORE request's Affected SOP Instance UID comes from the meta.
    meta_mismatch: bool = False

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Corpus:
    files: list[CorpusFile]
    excluded: dict[str, str]  # path -> reason

    def rounds(self) -> list[list[CorpusFile]]:
        """Round k holds the k-th variant (by file name) of every SOP instance."""
        groups: dict[str, list[CorpusFile]] = collections.defaultdict(list)
        for item in self.files:
            groups[item.sop_instance_uid].append(item)
        rounds: list[list[CorpusFile]] = []
        for variants in groups.values():
            # Valid files first, so a refused (truncated) variant is never the first.
            variants.sort(key=lambda f: (f.name in EXPECTED_REFUSED, f.name))
            for k, item in enumerate(variants):
                if len(rounds) <= k:
                    rounds.append([])
                rounds[k].append(item)
        return rounds


def corpus_paths() -> list[Path]:
    """pydicom's own test files plus the installed pydicom-data files (no downloads)."""
    base = Path(data_manager.DATA_ROOT) / "test_files"
    paths = {p.resolve() for p in base.rglob("*") if p.is_file() and p.suffix != ".py"}
    for name, source in data_manager.external_data_sources().items():
        for found in source.get_paths("**/*", data_manager.DataTypes.DATASET):
            if name == "pydicom-data" and not data_manager._check_data_hash(found):
                continue
            paths.add(Path(found).resolve())
    return sorted(paths, key=lambda p: (p.name, str(p)))


def load_corpus() -> Corpus:
    files: list[CorpusFile] = []
    excluded: dict[str, str] = {}
    for path in corpus_paths():
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            excluded[str(path)] = f"not a DICOM Part 10 file ({type(exc).__name__})"
            continue
        meta = ds.file_meta
        ts = str(meta.get("TransferSyntaxUID", "") or "")
        if ds.preamble is None or not ts:
            excluded[str(path)] = "no File Meta Information / Transfer Syntax UID"
            continue
        try:
            uids = {
                k: str(ds.get(k, "") or "").strip()
                for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
            }
        except Exception as exc:
            excluded[str(path)] = f"UIDs not readable ({exc})"
            continue
        missing = [k for k, v in uids.items() if not v]
        if missing:
            excluded[str(path)] = f"not a storable instance: no {', '.join(missing)}"
            continue
        if uids["SOPClassUID"] not in STORAGE_SOP_CLASSES:
            excluded[str(path)] = f"SOP class {uids['SOPClassUID']} is not a storage class"
            continue
        files.append(
            CorpusFile(
                path=path,
                sop_class_uid=uids["SOPClassUID"],
                sop_instance_uid=uids["SOPInstanceUID"],
                study_instance_uid=uids["StudyInstanceUID"],
                series_instance_uid=uids["SeriesInstanceUID"],
                transfer_syntax_uid=ts,
                meta_mismatch=(
                    str(meta.get("MediaStorageSOPClassUID", "")) != uids["SOPClassUID"]
                    or str(meta.get("MediaStorageSOPInstanceUID", "")) != uids["SOPInstanceUID"]
                ),
            )
        )
    return Corpus(files=files, excluded=excluded)


def with_fixed_meta(item: CorpusFile, folder: Path) -> Path:
    """A copy of ``item`` whose File Meta Information names the data set's own UIDs."""
    meta = read_file_meta_info(item.path)
    meta.MediaStorageSOPClassUID = item.sop_class_uid
    meta.MediaStorageSOPInstanceUID = item.sop_instance_uid
    del meta.FileMetaInformationGroupLength
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / item.name
    target.write_bytes(b"\0" * 128 + b"DICM" + buffer.getvalue() + dataset_bytes(item.path))
    assert dataset_bytes(target) == dataset_bytes(item.path)
    return target


@pytest.fixture
def replacing_server(settings: Settings, tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(settings, tmp_path, env={"HILUM_DICOM__DUPLICATE_POLICY": "replace"})
    try:
        yield running
    finally:
        stop_server(running)


def _pairs(files: list[CorpusFile]) -> dict[str, list[str]]:
    by_class: dict[str, set[str]] = collections.defaultdict(set)
    for item in files:
        by_class[item.sop_class_uid].add(item.transfer_syntax_uid)
    return {c: sorted(ts) for c, ts in sorted(by_class.items())}


def test_corpus_round_trip_is_byte_identical(
    replacing_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = replacing_server
    corpus = load_corpus()
    assert corpus.files, "no corpus files found: is pydicom-data installed?"
    names = {f.name for f in corpus.files}
    for name in EXPECTED_REFUSED:
        assert name in names, f"{name} is listed as refused but is not in the corpus"

    contexts = _pairs(corpus.files)
    store_ae = scu_ae("CORPUSSCU")
    for sop_class, syntaxes in contexts.items():
        for ts in syntaxes:
            store_ae.add_requested_context(sop_class, [ts])
    assert len(store_ae.requested_contexts) <= 128

    covered: dict[str, set[str]] = collections.defaultdict(set)  # TS -> file names
    covered_classes: dict[str, set[str]] = collections.defaultdict(set)
    problems: list[str] = []
    refused: list[str] = []
    fixed_meta: list[str] = []
    stored_uids: set[str] = set()
    rounds = corpus.rounds()
    get_session = GetSession(server, contexts)
    try:
        for number, batch in enumerate(rounds):
            # -- in: C-STORE straight from the file, data set bytes untouched --------
            before = snapshot(server.settings)
            assoc = associate(store_ae, server)
            statuses: dict[str, int] = {}
            try:
                with chunked_send():
                    for item in batch:
                        path = item.path
                        if item.meta_mismatch:
                            path = with_fixed_meta(item, tmp_path / f"fixed-{number}")
                            fixed_meta.append(item.name)
                        status = assoc.send_c_store(path)
                        assert status, f"no C-STORE response for {item.name}"
                        statuses[item.name] = int(status.Status)
            finally:
                assoc.release()

            # -- out: C-GET each instance in the transfer syntax it was sent in ----
            for item in batch:
                status = statuses[item.name]
                if item.name in EXPECTED_REFUSED:
                    want = EXPECTED_REFUSED[item.name][0]
                    if status != want:
                        problems.append(f"{item.name}: status 0x{status:04X}, not 0x{want:04X}")
                    refused.append(item.name)
                    continue
                if status != 0x0000:
                    problems.append(f"{item.name}: C-STORE status 0x{status:04X}")
                    continue
                stored_uids.add(item.sop_instance_uid)
                problems.extend(_check_round_trip(server, get_session, item))
                if not problems or not problems[-1].startswith(item.name):
                    covered[item.transfer_syntax_uid].add(item.name)
                    covered_classes[item.sop_class_uid].add(item.name)
            if any(f.name in EXPECTED_REFUSED for f in batch):
                # the round's refusals added nothing: everything else was a replacement
                after_round = snapshot(server.settings)
                new_uids = {f.sop_instance_uid for f in batch if f.name not in EXPECTED_REFUSED}
                assert after_round.rows["instances"] - before.rows["instances"] <= len(new_uids)
                assert not after_round.staging
    finally:
        get_session.close()

    after = snapshot(server.settings)
    with capsys.disabled():
        _report(corpus, rounds, covered, covered_classes, refused, fixed_meta, problems)

    assert not problems, "\n".join(problems)
    shipped = {f.transfer_syntax_uid for f in corpus.files}
    assert set(covered) == shipped, f"not round-tripped: {shipped - set(covered)}"
    assert len(covered) >= MIN_TRANSFER_SYNTAXES
    storable = {f.sop_class_uid for f in corpus.files if f.name not in EXPECTED_REFUSED}
    assert set(covered_classes) == storable, f"not round-tripped: {storable - set(covered_classes)}"
    assert len(covered_classes) >= MIN_SOP_CLASSES
    assert sorted(refused) == sorted(EXPECTED_REFUSED)
    # one row and one file per stored instance: replaced variants left nothing behind
    assert after.rows["instances"] == len(stored_uids)
    assert len(after.files) == len(stored_uids)
    assert not after.staging


def _check_round_trip(server: RunningServer, session: GetSession, item: CorpusFile) -> list[str]:
    """Index row, stored file and C-GET result of one stored corpus file."""
    row = instance_row(server.settings, item.sop_instance_uid)
    if row is None:
        return [f"{item.name}: no index row"]
    problems = []
    if (row.sop_class_uid, row.transfer_syntax_uid) != (
        item.sop_class_uid, item.transfer_syntax_uid
    ):
        problems.append(f"{item.name}: indexed as {row.sop_class_uid} / {row.transfer_syntax_uid}")
    original = dataset_bytes(item.path)
    if dataset_bytes(server.settings.storage_dir / row.storage_key) != original:
        problems.append(f"{item.name}: the stored file's data set differs from the original")
    result = session.get(
        identifier(
            "IMAGE",
            StudyInstanceUID=item.study_instance_uid,
            SeriesInstanceUID=item.series_instance_uid,
            SOPInstanceUID=item.sop_instance_uid,
        )
    )
    got = result.received.get(item.sop_instance_uid)
    code = int(result.status.Status)
    if code != 0x0000 or got is None or len(result.received) != 1:
        problems.append(
            f"{item.name}: C-GET status 0x{code:04X}, received {len(result.received)} instance(s)"
        )
    elif got[0] != item.transfer_syntax_uid:
        problems.append(f"{item.name}: C-GET sent {got[0]}, not {item.transfer_syntax_uid}")
    elif got[1] != original:
        problems.append(
            f"{item.name}: C-GET data set differs ({len(got[1])} vs {len(original)} bytes)"
        )
    return problems


def _report(
    corpus: Corpus,
    rounds: list[list[CorpusFile]],
    covered: dict[str, set[str]],
    covered_classes: dict[str, set[str]],
    refused: list[str],
    fixed_meta: list[str],
    problems: list[str],
) -> None:
    distinct = {f.sop_instance_uid for f in corpus.files}
    print(f"\nconformance corpus: {len(corpus.files)} files, {len(distinct)} SOP instances, "
          f"{len(rounds)} rounds")
    print(f"  transfer syntaxes round-tripped byte-identical ({len(covered)}):")
    for ts, files in sorted(covered.items()):
        print(f"    {ts:<24} {UID(ts).name:<62} {len(files):>3} file(s)")
    print(f"  SOP classes round-tripped byte-identical ({len(covered_classes)}):")
    for sop_class, files in sorted(covered_classes.items()):
        print(f"    {sop_class:<30} {UID(sop_class).name:<40} {len(files):>3} file(s)")
    print("  refused, as they must be:")
    for name in sorted(refused):
        status, reason = EXPECTED_REFUSED[name]
        print(f"    {name}: 0x{status:04X} ({reason})")
    print(f"  sent with corrected File Meta (meta UIDs != data set UIDs): {sorted(set(fixed_meta))}")
    print(f"  not sent ({len(corpus.excluded)}):")
    for path, reason in sorted(corpus.excluded.items(), key=lambda i: os.path.basename(i[0])):
        print(f"    {os.path.basename(path)}: {reason}")
    for problem in problems:
        print(f"  PROBLEM {problem}")


# A subset sent with DCMTK storescu, each with the option that makes storescu
# propose the file's own (compressed) transfer syntax.
STORESCU_SUBSET = {
    "color3d_jpeg_baseline.dcm": "-xy",  # JPEG Baseline
    "JPGExtended.dcm": "-xx",  # JPEG Extended
    "JPEG-LL.dcm": "-xs",  # JPEG Lossless SV1
    "MR_small_jp2klossless.dcm": "-xv",  # JPEG 2000 lossless
    "SC_rgb_rle.dcm": "-xr",  # RLE
    "emri_small_jpeg_ls_lossless.dcm": "-xt",  # JPEG-LS lossless
    "image_dfl.dcm": "-xd",  # Deflated Explicit VR Little Endian
    "ExplVR_BigEnd.dcm": "-xb",  # Explicit VR Big Endian
}


def test_storescu_sends_corpus_files_in_their_transfer_syntax(
    server: RunningServer, tmp_path: Path
) -> None:
    """DCMTK storescu as SCU: compressed corpus files are stored exactly as received.

    storescu re-encodes while sending (e.g. OW -> OB for encapsulated Pixel Data,
    trailing padding dropped), so the reference is what a bit-preserving DCMTK
    storescp (``-B``) receives from the same storescu command.
    """
    by_name = {f.name: f for f in load_corpus().files}
    with dcmtk_storescp(tmp_path / "reference", "REFSCP", "+xa", "-B") as reference:
        for name, option in STORESCU_SUBSET.items():
            item = by_name[name]
            for port, aet in ((server.port, server.ae_title), (reference.port, "REFSCP")):
                out = dcmtk("storescu", option, "-aet", "DCMTKSCU", "-aec", aet,
                            "127.0.0.1", str(port), str(item.path))
                assert out.returncode == 0, f"{name}: {out.stdout}{out.stderr}"
            received = [p for p in reference.received() if p.name.endswith(item.sop_instance_uid)]
            assert len(received) == 1, f"{name}: {reference.received()}"
            row = instance_row(server.settings, item.sop_instance_uid)
            assert row is not None, name
            assert row.transfer_syntax_uid == item.transfer_syntax_uid, name
            stored = dataset_bytes(stored_path(server.settings, item.sop_instance_uid))
            expected = dataset_bytes(received[0])
            if item.transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
                # on the wire the deflate stream is padded to even length; the
                # reference storescp drops the pad byte, Hilum keeps what it got
                stored, expected = _inflate(stored), _inflate(expected)
            assert stored == expected, name
    after = snapshot(server.settings)
    assert after.rows["instances"] == len(STORESCU_SUBSET)
    assert not after.staging


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = inflater.decompress(data)
    assert inflater.eof
    return out
