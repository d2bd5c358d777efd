"""Worker processes that share one listening socket (DICOM and HTTP alike).

`hilum serve` binds each port once, then spawns worker processes that all
accept on that socket: the kernel spreads connections over them, and the
work runs on every core instead of under one interpreter lock.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from hilum.domain.errors import HilumError

LOG = logging.getLogger(__name__)


def listen(host: str, port: int, what: str, backlog: int = 128) -> socket.socket:
    """A listening socket, created once before the workers start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listening socket says so (proto 0 cost ~40 ms per small HTTP answer: delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HilumError(f"cannot listen for {what} on {host}:{port}: {exc.strerror}") from None
    sock.listen(backlog)
    return sock


def exit_with_parent(stop: threading.Event) -> None:
    """A worker must never outlive `hilum serve` (it would keep accepting on the port)."""
    parent = os.getppid()
    try:  # Linux: the kernel sends SIGTERM when the parent dies
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass

    def _watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=_watch, name="parent-watch", daemon=True).start()


def stop_on_sigterm() -> threading.Event:
    """An event set by SIGTERM (or the parent's death); SIGINT is the parent's to handle."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(stop)
    return stop


class WorkerPool:
    """Starts ``count`` processes running ``target(settings_data, index, ready, socket)``,
    restarts one that dies, stops them all."""

    def __init__(
        self, name: str, target: Callable[..., None], count: int, settings_data: dict[str, Any],
        sock: socket.socket,
    ) -> None:
        self.name = name
        self.target = target
        self.count = count
        self.settings_data = settings_data
        self.socket: socket.socket | None = sock
        self._ctx = mp.get_context("spawn")
        self._procs: list[Any] = []
        self._events: list[MpEvent] = []
        self._stopping = False

    def _spawn(self, index: int, ready: MpEvent | None) -> Any:
        proc = self._ctx.Process(
            target=self.target,
            args=(self.settings_data, index, ready, self.socket),
            name=f"hilum-{self.name}-{index}",
        )
        proc.start()
        return proc

    def start(self, timeout: float = 60, *, wait: bool = True) -> None:
        """Spawn the workers; with ``wait``, return once every one is accepting."""
        self._events = []
        for index in range(self.count):
            ready = self._ctx.Event()
            self._procs.append(self._spawn(index, ready))
            self._events.append(ready)
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for proc, ready in zip(self._procs, self._events, strict=True):
            while not ready.wait(0.2):
                if not proc.is_alive():
                    self.stop()
                    raise HilumError(f"{self.name} worker {proc.name} failed to start")
                if time.monotonic() > deadline:
                    self.stop()
                    raise HilumError(f"{self.name} workers did not start in time")

    def restart_dead(self) -> None:
        for index, proc in enumerate(self._procs):
            if not proc.is_alive() and not self._stopping:
                LOG.error("%s worker %d exited (%s); restarting", self.name, index, proc.exitcode)
                self._procs[index] = self._spawn(index, None)

    def stop(self, timeout: float = 15) -> None:
        self._stopping = True
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(timeout=timeout)
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
                proc.join(timeout=5)
        self._procs.clear()
        if self.socket is not None:
            self.socket.close()
            self.socket = None
