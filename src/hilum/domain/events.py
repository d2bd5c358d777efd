"""In-process events: notifications (many handlers, can't change the outcome).

Routing, audit, metrics and prefetch subscribe to these instead of being
called from ingest (cf. pynetdicom's notification events).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InstanceStored:
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    storage_key: str
    size: int
    source: str
    status: str  # stored | replaced | already stored
    new_study: bool
    new_series: bool


@dataclass(frozen=True, slots=True)
class InstanceRejected:
    source: str
    reason: str
    sop_instance_uid: str | None


E = TypeVar("E")


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[type, list[Callable[[Any], None]]] = defaultdict(list)
        self._lock = threading.Lock()

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> None:
        with self._lock:
            self._handlers[kind].append(handler)

    def publish(self, event: object) -> None:
        for handler in list(self._handlers.get(type(event), ())):
            try:
                handler(event)
            except Exception:  # a notification handler never breaks the caller
                LOG.exception("event handler %r failed for %r", handler, event)
