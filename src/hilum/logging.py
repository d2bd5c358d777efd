"""Logging set-up with rich for the console."""

from __future__ import annotations

import logging

from rich.logging import RichHandler


def configure_logging(level: str = "INFO", *, prefix: str = "") -> None:
    handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
    fmt = f"[{prefix}] %(name)s: %(message)s" if prefix else "%(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO; keep it to problems.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLevelName(level)))
