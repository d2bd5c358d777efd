"""Roles, permissions, and which permission each HTTP route needs — in one place.

Routes do not check permissions themselves: :func:`required_permission` maps a
request (method + route template) to a permission, and the web layer's one
dependency enforces it. A route missing from :data:`ROUTES` is refused to all
but administrators, so a new endpoint is closed until it is listed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMINISTRATOR = "administrator"
    RADIOLOGIST = "radiologist"
    TECHNOLOGIST = "technologist"
    REFERRING = "referring"  # referring physician: only linked, granted or shared studies
    AUDITOR = "auditor"


class Perm(StrEnum):
    STUDY_READ = "study.read"  # search, view, retrieve
    STUDY_WRITE = "study.write"  # store (STOW-RS)
    STUDY_DELETE = "study.delete"
    STUDY_EXPORT = "study.export"  # zip download, send to another AE
    STUDY_GRANT = "study.grant"  # open a study to a user or group
    STUDY_SHARE = "study.share"  # share links to studies one may see
    STUDY_READING = "study.reading"  # set a study's reading status (start reading, mark read)
    CHANGES_READ = "changes.read"  # the change feed (every study)
    NODES_READ = "nodes.read"
    NODES_WRITE = "nodes.write"
    JOBS_READ = "jobs.read"
    JOBS_WRITE = "jobs.write"
    SYSTEM_READ = "system.read"  # statistics
    AUDIT_READ = "audit.read"
    USERS_ADMIN = "users.admin"
    SELF = "self"  # one's own account: who am I, own API keys
    PUBLIC = "public"  # no authentication (health, login)


ROLE_PERMISSIONS: dict[Role, frozenset[Perm]] = {
    Role.ADMINISTRATOR: frozenset(Perm),
    Role.RADIOLOGIST: frozenset(
        {
            Perm.STUDY_READ,
            Perm.STUDY_WRITE,
            Perm.STUDY_EXPORT,
            Perm.STUDY_GRANT,
            Perm.STUDY_SHARE,
            Perm.STUDY_READING,
            Perm.JOBS_READ,
            Perm.JOBS_WRITE,
            Perm.NODES_READ,
            Perm.SYSTEM_READ,
            Perm.SELF,
            Perm.PUBLIC,
        }
    ),
    Role.TECHNOLOGIST: frozenset(
        {
            Perm.STUDY_READ,
            Perm.STUDY_WRITE,
            Perm.STUDY_EXPORT,
            Perm.STUDY_SHARE,
            Perm.JOBS_READ,
            Perm.JOBS_WRITE,
            Perm.NODES_READ,
            Perm.SYSTEM_READ,
            Perm.SELF,
            Perm.PUBLIC,
        }
    ),
    # Referring physicians may share the studies they see (second opinions, the patient).
    Role.REFERRING: frozenset({Perm.STUDY_READ, Perm.STUDY_SHARE, Perm.SELF, Perm.PUBLIC}),
    Role.AUDITOR: frozenset({Perm.AUDIT_READ, Perm.SYSTEM_READ, Perm.SELF, Perm.PUBLIC}),
}
# Roles that see every study (the others only those opened to them).
ALL_STUDIES = frozenset({Role.ADMINISTRATOR, Role.RADIOLOGIST, Role.TECHNOLOGIST})


@dataclass(frozen=True, slots=True)
class Rule:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    permission: Perm


def _rule(methods: str, pattern: str, permission: Perm) -> Rule:
    return Rule(frozenset(methods.split()), re.compile(pattern + r"\Z"), permission)


_RESOURCES = r"/api/v1/(patients|studies|series|instances)"
# First match wins. Patterns are matched against the route template (e.g.
# "/dicomweb/studies/{study_uid}/metadata"), not the concrete path.
ROUTES: list[Rule] = [
    _rule("GET HEAD", r"/api/v1/health", Perm.PUBLIC),
    _rule("POST", r"/api/v1/auth/(login|token)", Perm.PUBLIC),
    _rule("GET", r"/api/v1/auth/(providers|oidc/login|oidc/callback)", Perm.PUBLIC),  # single sign-on
    _rule("POST", r"/api/v1/auth/logout", Perm.SELF),
    _rule("GET", r"/api/v1/auth/me", Perm.SELF),
    _rule("GET POST", r"/api/v1/auth/api-keys", Perm.SELF),
    _rule("DELETE", r"/api/v1/auth/api-keys/\{key_id\}", Perm.SELF),
    _rule("GET HEAD", r"/api/(v1/openapi\.json|docs|docs/oauth2-redirect)", Perm.PUBLIC),
    _rule("GET POST PUT DELETE", r"/api/v1/users(/.*)?", Perm.USERS_ADMIN),
    _rule("POST", r"/dicomweb/studies(/\{study_uid\})?", Perm.STUDY_WRITE),
    _rule("GET HEAD", r"/dicomweb/.*", Perm.STUDY_READ),
    _rule("GET HEAD", _RESOURCES + r"/\{[a-z_]+\}/archive", Perm.STUDY_EXPORT),
    _rule("GET POST DELETE", r"/api/v1/studies/\{study_uid\}/grants(/.*)?", Perm.STUDY_GRANT),
    # The viewer's measurements, stored as DICOM SR (web/api/annotations.py).
    _rule("GET HEAD", r"/api/v1/studies/\{study_uid\}/annotations", Perm.STUDY_READ),
    _rule("POST", r"/api/v1/studies/\{study_uid\}/annotations", Perm.STUDY_WRITE),
    # Key images marked in the viewer, stored as Key Object Selection documents (web/api/keyimages.py).
    _rule("POST", r"/api/v1/studies/\{study_uid\}/key-images", Perm.STUDY_WRITE),
    # Reading status (web/api/reading.py): radiologists; anyone who sees the study reads it.
    _rule("PUT", r"/api/v1/studies/\{study_uid\}/reading", Perm.STUDY_READING),
    _rule("GET HEAD", _RESOURCES + r"(/.*)?", Perm.STUDY_READ),
    _rule("DELETE", _RESOURCES + r"/.*", Perm.STUDY_DELETE),
    _rule("GET", r"/api/v1/changes", Perm.CHANGES_READ),
    _rule("GET", r"/api/v1/statistics", Perm.SYSTEM_READ),
    _rule("GET", r"/api/v1/remote-aes(/\{name\})?", Perm.NODES_READ),
    _rule("POST", r"/api/v1/remote-aes/\{name\}/echo", Perm.NODES_READ),
    _rule("POST DELETE", r"/api/v1/remote-aes(/\{name\})?", Perm.NODES_WRITE),
    _rule("GET", r"/api/v1/jobs(/\{job_id\})?", Perm.JOBS_READ),
    _rule("POST", r"/api/v1/jobs(/\{job_id\}/(retry|cancel))?", Perm.JOBS_WRITE),
    _rule("GET", r"/api/v1/audit(/.*)?", Perm.AUDIT_READ),
    _rule("POST", r"/api/v1/shares/open", Perm.PUBLIC),
    _rule("GET DELETE", r"/api/v1/shares/session", Perm.SELF),
    _rule("GET POST", r"/api/v1/shares", Perm.STUDY_SHARE),
    _rule("GET DELETE", r"/api/v1/shares/\{share_id\}", Perm.STUDY_SHARE),
]
ADMIN_ONLY = Perm.USERS_ADMIN

# All a session opened from a share link may call, whatever permissions it holds: reading
# its studies (which ones: hilum.auth.access), the zip download when the link allows it,
# who am I, and ending the session. Everything else is refused (403).
SHARE_ROUTES: list[Rule] = [
    _rule("GET HEAD", r"/dicomweb/(studies|series|instances|wado)(/.*)?", Perm.STUDY_READ),
    _rule("GET HEAD", r"/api/v1/(studies|series|instances)/\{[a-z_]+\}/archive", Perm.STUDY_EXPORT),
    _rule("GET HEAD", r"/api/v1/(studies|series|instances)(/\{[a-z_]+\})?", Perm.STUDY_READ),
    _rule("GET HEAD", r"/api/v1/studies/\{study_uid\}/annotations", Perm.STUDY_READ),  # read, never write
    _rule("GET", r"/api/v1/auth/me", Perm.SELF),
    _rule("POST", r"/api/v1/auth/logout", Perm.SELF),
    _rule("GET DELETE", r"/api/v1/shares/session", Perm.SELF),
]
# What a share session holds: read, plus study.export when the link allows downloads.
SHARE_PERMISSIONS = frozenset({Perm.STUDY_READ, Perm.SELF})


def required_permission(method: str, route: str) -> Perm:
    """The permission a request needs; unlisted routes need an administrator."""
    method = "GET" if method == "HEAD" else method
    for rule in ROUTES:
        if method in rule.methods and rule.pattern.match(route):
            return rule.permission
    return ADMIN_ONLY


def share_route_allowed(method: str, route: str) -> bool:
    """Whether a share link's session may call this route at all."""
    method = "GET" if method == "HEAD" else method
    return any(method in rule.methods and rule.pattern.match(route) for rule in SHARE_ROUTES)


def permissions_of(role: str) -> frozenset[Perm]:
    try:
        return ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return frozenset({Perm.PUBLIC})
