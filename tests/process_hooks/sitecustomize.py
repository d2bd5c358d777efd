"""Loaded by every Python process started with this folder on PYTHONPATH (tests only).

With HILUM_TEST_STOP_WRITER_FOR=<PatientID>, the index writer thread of a `hilum serve`
worker stops with an error when a batch holds an instance of that patient: the
failure tests/test_process_lifecycle.py makes a worker recover from.
"""

import os

_PATIENT = os.environ.get("HILUM_TEST_STOP_WRITER_FOR")

if _PATIENT:
    from hilum.index import writer as _writer

    _process = _writer.IndexWriter._process

    def _process_or_stop(self, batch):
        if any(w.parsed.patient.get("patient_id") == _PATIENT for w in batch):
            raise RuntimeError(f"test: index writer stopped by patient {_PATIENT}")
        return _process(self, batch)

    _writer.IndexWriter._process = _process_or_stop
