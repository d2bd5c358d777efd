"""multipart/related (RFC 2387) for DICOMweb: Accept negotiation, streaming writer, streaming reader."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from python_multipart.multipart import MultipartParser

from hilum.web.problems import Problem

CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an Accept header: ``multipart/related; type="application/dicom"; ...``."""

    type: str  # e.g. "multipart/related", "application/dicom+json", "*/*"
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def part_type(self) -> str | None:
        """For multipart/related: the media type of each part (the ``type`` parameter)."""
        value = self.params.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    def matches(self, media_type: str) -> bool:
        if self.type in ("*/*", media_type):
            return True
        major, _, minor = self.type.partition("/")
        return minor == "*" and media_type.startswith(major + "/")


_PARAM = re.compile(r'\s*;\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)')


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header into media ranges, best first (stable for equal q)."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for item in _split_top_level(header):
        item = item.strip()
        if not item:
            continue
        media, _, rest = item.partition(";")
        params: dict[str, str] = {}
        q = 1.0
        for match in _PARAM.finditer(";" + rest):
            name, value = match.group(1).lower(), match.group(2).strip('"')
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    raise Problem(400, f"Accept: bad quality value {value!r}") from None
            else:
                params[name] = value
        ranges.append(MediaRange(media.strip().lower(), params, q))
    ranges.sort(key=lambda r: -r.q)
    return [r for r in ranges if r.q > 0] or [MediaRange("*/*")]


def _split_top_level(header: str) -> list[str]:
    """Split on commas that are not inside quoted strings."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def new_boundary() -> str:
    return f"hilum-{uuid.uuid4().hex}"


def multipart_content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


@dataclass(slots=True)
class Part:
    content_type: str
    body: Iterable[bytes]
    location: str | None = None


def write_multipart(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """Yield a multipart/related body part by part (each part's body streamed as given)."""
    delimiter = b"--" + boundary.encode()
    for part in parts:
        yield part_head(boundary, part.content_type, part.location)
        yield from part.body
        yield CRLF
    yield delimiter + b"--" + CRLF


def part_head(boundary: str, content_type: str, location: str | None = None) -> bytes:
    head = b"--" + boundary.encode() + CRLF + b"Content-Type: " + content_type.encode() + CRLF
    if location:
        head += b"Content-Location: " + location.encode() + CRLF
    return head + CRLF


def multipart_length(boundary: str, parts: Iterable[tuple[str, int]]) -> int:
    """The exact size of a multipart body of parts (content type, body size), without locations."""
    total = sum(len(part_head(boundary, content_type)) + size + len(CRLF) for content_type, size in parts)
    return total + len(b"--" + boundary.encode() + b"--" + CRLF)


def boundary_of(content_type: str) -> tuple[str, dict[str, str]]:
    """The media type and parameters of a Content-Type header."""
    media, _, rest = content_type.partition(";")
    params = {m.group(1).lower(): m.group(2).strip('"') for m in _PARAM.finditer(";" + rest)}
    return media.strip().lower(), params


class MultipartReader:
    """Feed a multipart/related body chunk by chunk; each part is handed to ``sink``.

    ``sink.begin(headers)`` -> a per-part writer with ``write(bytes)`` and ``close()``.
    After the last chunk call :meth:`finish`, which raises :class:`Problem` (400)
    when the body ended before the closing delimiter.
    """

    def __init__(self, boundary: str, sink: PartSink) -> None:
        self.sink = sink
        self.complete = False
        self.parts = 0
        self._headers: dict[str, str] = {}
        self._field = b""
        self._value = b""
        self._writer: PartWriter | None = None
        self._parser = MultipartParser(
            boundary.encode("latin-1"),
            callbacks={
                "on_part_begin": self._part_begin,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_end": self._end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except (Problem, OSError):  # the sink's own answer, or its storage failing: not the body's fault
            raise
        except Exception as exc:  # python-multipart raises its own parse errors
            raise Problem(400, f"malformed multipart body: {exc}") from None

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except (Problem, OSError):
            raise
        except Exception as exc:
            raise Problem(400, f"malformed multipart body: {exc}") from None
        if not self.complete:
            raise Problem(400, "multipart body is truncated: the closing boundary is missing")

    # -- parser callbacks ----------------------------------------------------------
    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        self._writer = self.sink.begin(self._headers)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writer is not None:
            self._writer.write(data[start:end])

    def _part_end(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.parts += 1

    def _end(self) -> None:
        self.complete = True


class PartWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class PartSink(Protocol):
    def begin(self, headers: dict[str, str]) -> PartWriter: ...
