"""Latency settings for pynetdicom's reactor loops (measured in bench/)."""

from __future__ import annotations


def apply_pynetdicom_tuning() -> None:
    """Placeholder until measurements decide; see bench/RESULTS.md."""
