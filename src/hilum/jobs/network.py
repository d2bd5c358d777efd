"""Why a peer cannot be reached, in words (for job errors and C-ECHO answers)."""

from __future__ import annotations

import socket

from hilum.config import RemoteAE


def connect_problem(host: str, port: int, *, timeout: float = 3.0) -> str | None:
    """None if a TCP connection to ``host:port`` opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r} ({exc.strerror or exc})"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g} s"
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or exc})"


def describe_association_failure(exc: Exception, remote: RemoteAE, calling_ae_title: str) -> str:
    """A failed association in words: the SCU's message plus why, when it can tell."""
    peer = f"{remote.ae_title}@{remote.host}:{remote.port}"
    message = str(exc) or type(exc).__name__
    if "rejected" in message:
        return (
            f"{message} (the peer refused the association: does it know calling AE title "
            f"{calling_ae_title!r} and answer to called AE title {remote.ae_title!r}?)"
        )
    problem = connect_problem(remote.host, remote.port)
    if problem is None:
        return message if peer in message else f"{peer}: {message}"
    if peer in message:
        return f"{message}: {problem}"
    return f"association with {peer} failed: {problem}"
