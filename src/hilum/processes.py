"""Worker processes that share one listening socket (DICOM and HTTP alike).

`hilum serve` binds each port once, then spawns worker processes that all
accept on that socket: the kernel spreads connections over them, and the
work runs on every core instead of under one interpreter lock.

A worker never outlives `hilum serve`: the first thing it runs asks the kernel
for SIGTERM when its parent dies (PR_SET_PDEATHSIG) and then checks that the
parent is still the one that spawned it, since the parent may have died before
(see :func:`worker_entry`). SIGTERM ends a worker in every phase: while it
starts it exits at once; once it serves it stops gracefully, within
:data:`STOP_GRACE` seconds whatever its connections do.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from hilum.domain.errors import HilumError

LOG = logging.getLogger(__name__)

# Seconds a worker may take to stop once told (SIGTERM, its parent's death): then it exits anyway.
STOP_GRACE = 20.0
# Exit status of a worker whose index writer stopped: `hilum serve` starts a new one.
EXIT_WRITER_FAILED = 70
_PR_SET_PDEATHSIG = 1


class StopRequested(Exception):
    """SIGTERM or SIGINT reached `hilum serve` while it was starting."""


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


def _signal_on_parent_death(signum: int) -> None:
    """Linux: the kernel sends ``signum`` when the thread that spawned this process ends."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent-watch thread alone
        pass


class WorkerControl:
    """How a worker process is told to stop: SIGTERM, its parent's death, or a failure
    of its own (:meth:`fail`). Until :meth:`serving`, SIGTERM ends it at once."""

    def __init__(self, parent: int) -> None:
        self.parent = parent
        self.stop = threading.Event()
        self.failure: str | None = None
        self._serving = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle
        threading.Thread(target=self._watch_parent, name="parent-watch", daemon=True).start()

    def _on_sigterm(self, signum: int, _frame: Any) -> None:
        if not self._serving:  # half-started: nothing to finish, die as SIGTERM's default would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            os._exit(128 + signum)
        self.request_stop()

    def request_stop(self) -> None:
        """Stop gracefully, but within STOP_GRACE seconds whatever the worker is doing."""
        if not self.stop.is_set():
            self.stop.set()
            timer = threading.Timer(STOP_GRACE, self._stop_overdue)
            timer.daemon = True
            timer.start()

    @staticmethod
    def _stop_overdue() -> None:
        LOG.error("not stopped %.0f s after being told to: exiting now", STOP_GRACE)
        os._exit(1)

    def _watch_parent(self) -> None:
        while not self.stop.wait(0.5):
            if os.getppid() != self.parent:
                LOG.warning("'hilum serve' (pid %d) is gone: stopping", self.parent)
                if not self._serving:
                    os._exit(1)
                self.request_stop()

    def serving(self, ready: Connection | None) -> None:
        """Started: from now SIGTERM stops gracefully; tell the parent (if it waits)."""
        self._serving = True
        if ready is not None:
            try:
                ready.send_bytes(b"ready")
            except OSError:  # the parent is gone: the watch above stops this worker
                pass
            ready.close()

    def fail(self, reason: str) -> None:
        """Something this worker cannot do without has stopped (its index writer):
        the worker exits with EXIT_WRITER_FAILED and `hilum serve` starts a new one."""
        LOG.critical("%s: this worker exits and is replaced", reason)
        self.failure = reason
        self.request_stop()

    def exit_if_failed(self) -> None:
        if self.failure is not None:
            time.sleep(1.0)  # the answers to the writes that failed go out first
            logging.shutdown()
            os._exit(EXIT_WRITER_FAILED)


def worker_entry(parent: int, target: str, *args: Any) -> None:
    """First code a spawned worker runs: never outlive the parent, then run ``target``
    (``"module:function"``, called with a WorkerControl and ``args``)."""
    _signal_on_parent_death(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above: nobody will stop us
        os._exit(1)
    control = WorkerControl(parent)
    control.install()
    module, _, name = target.partition(":")
    function: Callable[..., None] = getattr(importlib.import_module(module), name)
    function(control, *args)
    control.exit_if_failed()


class WorkerPool:
    """Starts ``count`` processes running ``target(control, settings_data, index, ready,
    *sockets)`` (``target`` as ``"module:function"``), restarts one that dies, stops them all."""

    def __init__(
        self, name: str, target: str, count: int, settings_data: dict[str, Any],
        sock: socket.socket, *more_sockets: socket.socket | None,
    ) -> None:
        self.name = name
        self.target = target
        self.count = count
        self.settings_data = settings_data
        self.sockets: list[socket.socket | None] = [sock, *more_sockets]
        self._ctx = mp.get_context("spawn")
        self._procs: list[Any] = []
        self._ready: list[Connection | None] = []
        self._stopping = False

    def _spawn(self, index: int, ready: Connection | None) -> Any:
        proc = self._ctx.Process(
            target=worker_entry,
            args=(os.getpid(), self.target, self.settings_data, index, ready, *self.sockets),
            name=f"hilum-{self.name}-{index}",
        )
        # The child inherits a blocked SIGINT: a Ctrl+C in the terminal reaches the whole
        # process group, and stopping the workers is the parent's business.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return proc

    def start(
        self, timeout: float = 60, *, wait: bool = True, stop: threading.Event | None = None
    ) -> None:
        """Spawn the workers; with ``wait``, return once every one is accepting."""
        self._ready = []
        for index in range(self.count):
            if stop is not None and stop.is_set():
                raise StopRequested
            reader, writer = self._ctx.Pipe(duplex=False)
            self._ready.append(reader)
            self._procs.append(self._spawn(index, writer))
            writer.close()  # the child holds the only writing end: EOF when it dies
        if wait:
            self.wait_ready(timeout, stop=stop)

    def wait_ready(self, timeout: float = 60, *, stop: threading.Event | None = None) -> None:
        """Until every worker has said it is accepting; StopRequested once ``stop`` is set."""
        deadline = time.monotonic() + timeout
        waiting = {i for i, reader in enumerate(self._ready) if reader is not None}
        while waiting:
            if stop is not None and stop.is_set():
                raise StopRequested
            for i in sorted(waiting):
                reader = self._ready[i]
                assert reader is not None
                if not reader.poll():
                    continue
                try:
                    reader.recv_bytes()
                except (EOFError, OSError):
                    self.stop()
                    raise HilumError(
                        f"{self.name} worker {i} failed to start (see the log above)"
                    ) from None
                reader.close()
                self._ready[i] = None
                waiting.discard(i)
            if time.monotonic() > deadline:
                self.stop()
                raise HilumError(f"{self.name} workers did not start in time")
            pending: Sequence[Any] = [self._ready[i] for i in waiting]
            if pending:
                wait(pending, timeout=0.2)

    def restart_dead(self) -> None:
        for index, proc in enumerate(self._procs):
            if not proc.is_alive() and not self._stopping:
                LOG.error("%s worker %d exited (%s); restarting", self.name, index, proc.exitcode)
                self._procs[index] = self._spawn(index, None)

    def terminate(self) -> None:
        """Tell every worker to stop (SIGTERM), without waiting."""
        self._stopping = True
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()

    def stop(self, timeout: float = 15) -> None:
        self.terminate()
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
                proc.join(timeout=5)
        self._procs.clear()
        for reader in self._ready:
            if reader is not None:
                reader.close()
        self._ready = []
        for sock in self.sockets:
            if sock is not None:
                sock.close()
        self.sockets = []
