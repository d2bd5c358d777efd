"""End-to-end smoke test: a real server driven by DCMTK's echoscu / storescu / findscu."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import RunningServer, require_tool
from factory import StudySpec, write_study


def test_echo_store_find_with_dcmtk(server: RunningServer, tmp_path: Path) -> None:
    echoscu = require_tool("echoscu")
    subprocess.run([echoscu, "-aec", server.ae_title, "127.0.0.1", str(server.port)], check=True)
    files = write_study(StudySpec(slices=4), tmp_path / "in")
    subprocess.run(
        [require_tool("storescu"), "-aec", server.ae_title, "127.0.0.1", str(server.port), *map(str, files)],
        check=True,
    )
    out = subprocess.run(
        [require_tool("findscu"), "-S", "-aec", server.ae_title,
         "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PAT001",
         "-k", "NumberOfStudyRelatedInstances", "-k", "ModalitiesInStudy",
         "127.0.0.1", str(server.port)],
        capture_output=True, text=True, check=True,
    )
    text = out.stdout + out.stderr
    assert "NumberOfStudyRelatedInstances" in text
    assert "[4 ]" in text or "[4]" in text
    assert "[CT]" in text
