"""The HTTP audit middleware: which DICOMweb and REST requests make which record.

A plain ASGI middleware (no response buffering). It matches the method and
path against the table below; after the response it records the event with
the outcome its status gives (2xx/3xx success, 4xx minor failure, 5xx serious
failure). Reads of one study by one client are folded into one record (a
viewer fetching 500 frames is one access). Deletions look up the patients and
studies before the request runs, while they still exist.

The requestor is ``request.state.audit_user``, ``.principal`` or ``.user`` (a
string, or an object with ``username`` / ``name``) when authentication has set
one, else the client's IP address.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from anyio import to_thread

from hilum.audit import builders, codes, store
from hilum.audit.builders import Party, Patient
from hilum.audit.messages import AuditMessage
from hilum.audit.service import AuditService, Studies, exact_values
from hilum.domain.attributes import Level
from hilum.web.uploads import CLIENT_DISCONNECTED

LOG = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
_MAX_BODY = 64 * 1024  # request bodies read for the record (jobs, remote AEs): small JSON

# Not a status any response carried: the client went away before its request was complete
# (the number nginx logs for it). A minor failure, never a serious one.
CLIENT_CLOSED = 499
_ABANDONED = {
    CLIENT_CLOSED: "client disconnected before its request was complete",
    408: "request body not received in time (http.body_timeout)",
    429: "too many uploads from one address at once (http.max_uploads_per_client)",
}

_UID = r"(?P<{}>[^/]+)"
_LEVELS = {
    "patients": Level.PATIENT, "studies": Level.STUDY, "series": Level.SERIES, "instances": Level.IMAGE,
}


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    kind: str  # query | retrieve | stow | read | export | delete | node | job


def _route(method: str, pattern: str, kind: str) -> Route:
    return Route(method, re.compile("^" + pattern.format(study=_UID.format("study"),
                                                          uid=_UID.format("uid")) + "$"), kind)


ROUTES = (
    # DICOMweb (PS3.18)
    _route("GET", r"/dicomweb/(?:studies|series|instances)", "query"),
    _route("GET", r"/dicomweb/studies/{study}/(?:series|instances)", "query"),
    _route("GET", r"/dicomweb/studies/{study}/series/[^/]+/instances", "query"),
    _route("GET", r"/dicomweb/studies/{study}(?:/.*)?", "retrieve"),
    _route("GET", r"/dicomweb/wado", "retrieve"),
    _route("POST", r"/dicomweb/studies(?:/{study})?", "stow"),
    # the management API
    _route("GET", r"/api/v1/(?:patients|studies|series|instances)", "query"),
    _route("GET", r"/api/v1/(?P<level>studies|series)/{uid}/archive", "export"),
    _route("GET", r"/api/v1/(?P<level>patients|studies|series|instances)/{uid}", "read"),
    _route("DELETE", r"/api/v1/(?P<level>patients|studies|series|instances)/{uid}", "delete"),
    _route("POST", r"/api/v1/remote-aes", "node"),
    _route("DELETE", r"/api/v1/remote-aes/{uid}", "node"),
    _route("POST", r"/api/v1/jobs", "job"),
)


def match(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    for route in ROUTES:
        if route.method == method:
            found = route.pattern.match(path)
            if found:
                return route, {k: unquote(v) for k, v in found.groupdict().items() if v is not None}
    return None


def requestor(scope: Scope) -> Party:
    """Who made the request: the authenticated user if any, and the client address."""
    client = scope.get("client")
    ip = str(client[0]) if client else ""
    state = scope.get("state") or {}
    found = state.get("audit_user") or state.get("principal") or state.get("user")
    user, name = "", ""
    if isinstance(found, str):
        user = found
    elif found is not None:
        user = str(getattr(found, "username", None) or getattr(found, "name", None) or found)
        name = str(getattr(found, "display_name", "") or "")
    return Party(user or ip or "unknown", ip, user_name=name)


def outcome_of(status: int) -> int:
    if status < 400:
        return codes.SUCCESS
    return codes.MINOR_FAILURE if status < 500 else codes.SERIOUS_FAILURE


def _base(scope: Scope) -> str:
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1") or "localhost"
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}"


class AuditMiddleware:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found = match(scope["method"], scope["path"])
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        audit: AuditService | None = getattr(services, "audit", None)
        if found is None or audit is None or not audit.enabled:
            await self.app(scope, receive, send)
            return
        route, params = found
        scope.setdefault("state", {})  # shared with request.state: the user set by authentication
        before: dict[str, Patient] | None = None
        if route.kind == "delete":
            before = await self._subjects(audit, params)
        status = 500
        body = bytearray()
        wants_body = route.kind in ("job", "node")

        async def receive_tee() -> Message:
            message = await receive()
            if wants_body and message["type"] == "http.request" and len(body) < _MAX_BODY:
                body.extend(message.get("body", b"")[: _MAX_BODY - len(body)])
            return message

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive_tee if wants_body else receive, send_status)
        finally:
            if scope["state"].get(CLIENT_DISCONNECTED):
                status = CLIENT_CLOSED  # whatever the route made of it, nobody received it
            try:
                await self._record(audit, scope, route, params, status, bytes(body), before)
            except Exception:  # auditing never breaks the response
                LOG.exception("cannot audit %s %s", scope["method"], scope["path"])

    async def _subjects(self, audit: AuditService, params: dict[str, str]) -> dict[str, Patient]:
        level = _LEVELS[params["level"]]

        def lookup() -> dict[str, Patient]:
            with audit.engine.connect() as conn:
                return store.subjects(conn, level, params["uid"])

        if "\x00" in params["uid"]:
            return {}
        try:
            return await to_thread.run_sync(lookup)
        except Exception as exc:  # the record is still written, without the patient
            LOG.warning("cannot look up what %s/%s names: %s", params["level"], params["uid"][:80], exc)
            return {}

    async def _record(
        self, audit: AuditService, scope: Scope, route: Route, params: dict[str, str], status: int,
        body: bytes, before: dict[str, Patient] | None,
    ) -> None:
        who = requestor(scope)
        outcome = outcome_of(status)
        detail = "" if outcome == codes.SUCCESS else _ABANDONED.get(status, f"HTTP {status}")
        url = _base(scope) + scope["path"]
        node = audit.node(url)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        kind = route.kind
        if kind == "query":
            query_string = scope.get("query_string", b"").decode("latin-1")
            target = scope["path"] + (f"?{query_string}" if query_string else "")
            patient_ids = [v for k in ("PatientID", "00100020") for v in query.get(k, []) if "*" not in v
                           and "?" not in v]
            study_uids = [params["study"]] if "study" in params else [
                uid for k in ("StudyInstanceUID", "0020000D") for v in query.get(k, [])
                for uid in exact_values(v.replace(",", "\\"))
            ]
            audit.record(builders.query(
                requestor=who, node=node, sop_class_uid=codes.STUDY_ROOT_FIND,
                query_bytes=target.encode("utf-8"), patients=[Patient(p) for p in patient_ids],
                study_uids=study_uids, outcome=outcome, detail=detail,
            ))
        elif kind == "retrieve":
            study = params.get("study") or (query.get("studyUID") or [""])[0]
            dicomweb = audit.node(_base(scope) + "/dicomweb")
            self._fold(audit, ("http-retrieve", who, study, outcome), who, dicomweb, study, outcome, detail,
                       accessed=False)
        elif kind == "read":
            subjects = await self._subjects(audit, params)
            api = audit.node(_base(scope) + "/api/v1")
            if subjects:
                for study in subjects:
                    self._fold(audit, ("http-read", who, study, outcome), who, api, study, outcome, detail,
                               accessed=True)
            elif status >= 400:
                self._fold(audit, ("http-read", who, "", outcome), who, api, "", outcome,
                           detail or "not found", accessed=True)
        elif kind == "export":
            subjects = await self._subjects(audit, params)
            audit.record(builders.export(
                requestor=who, node=node, media_uri=url, studies={uid: {} for uid in subjects} or (
                    {params["uid"]: {}} if params["level"] == "studies" else {}),
                patients=list(subjects.values()), outcome=outcome, detail=detail,
            ))
        elif kind == "delete":
            subjects = before or {}
            uid = params["uid"]
            patients = list(subjects.values()) or ([Patient(uid)] if params["level"] == "patients" else [])
            studies = list(subjects) or ([uid] if params["level"] == "studies" else [])
            audit.record(builders.deleted(
                requestor=who, node=node, level=_LEVELS[params["level"]].value, studies=studies,
                patients=patients, outcome=outcome, detail=detail,
            ))
        elif kind == "stow":
            # Stored and refused instances are reported by ingest (per study); here only
            # requests refused as a whole (bad media type, too large, malformed ...).
            study = params.get("study", "")
            if status in _ABANDONED:
                # Uploads abandoned, timed out or over the per-client limit come in floods:
                # one minor-failure record per client and reason for a burst.
                def make(studies: Studies, worst: int, text: str) -> AuditMessage:
                    return builders.transferred(source=who, destination=node, requestor=who, studies=studies,
                                                action="C", outcome=worst, detail=text)

                audit.aggregate(("http-abandoned", who.user_id, who.address, status), make,
                                study_uid=study, outcome=outcome, detail=detail)
            elif status not in (200, 202, 409):
                audit.record(builders.transferred(
                    source=who, destination=node, requestor=who, studies={study: {}} if study else {},
                    action="C", outcome=outcome, detail=detail,
                ))
        elif kind == "node":
            name = params.get("uid") or _json_field(body, "name") or "?"
            verb = "removed" if scope["method"] == "DELETE" else "added"
            audit.security_alert(
                "network-configuration", user=who.user_id, ip=who.address,
                subject=builders.node_subject(name), outcome=outcome,
                detail=f"remote AE {name} {verb}" + ("" if outcome == codes.SUCCESS else f" ({detail})"),
            )
        elif kind == "job":
            self._job(audit, who, node, body, outcome, detail)

    def _fold(
        self, audit: AuditService, key: tuple[Any, ...], who: Party, node: Party, study: str, outcome: int,
        detail: str, *, accessed: bool,
    ) -> None:
        def make(studies: Studies, worst: int, text: str) -> AuditMessage:
            if accessed:
                return builders.accessed(requestor=who, node=node, studies=studies, outcome=worst,
                                         detail=text)
            return builders.transferred(
                source=node, destination=who, requestor=who, studies=studies, action="R", outcome=worst,
                detail=text,
            )

        audit.aggregate(key, make, study_uid=study, outcome=outcome, detail=detail)

    def _job(
        self, audit: AuditService, who: Party, node: Party, body: bytes, outcome: int, detail: str
    ) -> None:
        request = _json_object(body)
        uids = request.get("study_instance_uid") or []
        uids = [uids] if isinstance(uids, str) else [u for u in uids if isinstance(u, str)]
        destination = Party(str(request.get("destination") or audit.ae_title))
        if request.get("kind") == "move":
            source = Party(str(request.get("source") or "?"))
        else:
            source = node
        audit.record(builders.begin_transferring(
            source=source, destination=destination, requestor=who, studies={uid: {} for uid in uids},
            outcome=outcome, detail=detail,
        ))


def _json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; {} for anything else (the request was refused)."""
    try:
        found = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # malformed, or nested deeper than the parser goes
        return {}
    return found if isinstance(found, dict) else {}


def _json_field(body: bytes, name: str) -> str:
    value = _json_object(body).get(name)
    return str(value) if value else ""
