"""From the provider's claims to a Hilum user: name, display and person name, groups, role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hilum.auth.oidc.client import OidcError
from hilum.auth.oidc.settings import OidcSettings
from hilum.auth.service import AccountError, validate_username

MAX_GROUPS = 200  # more than this many groups in one token is a misconfigured claim
MAX_GROUP_LENGTH = 64  # a grant's principal column


@dataclass(frozen=True, slots=True)
class Profile:
    """The Hilum user an IdP account stands for, as of this sign-on."""

    username: str
    display_name: str
    person_name: str | None  # None: person_name_claim not configured (leave it as it is)
    groups: tuple[str, ...]
    role: str


def claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or a dotted path into nested objects ("realm_access.roles")."""
    if not path:
        return None
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _values(value: Any) -> list[str]:
    """A claim holding one or several values: a list of strings, or one string."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def map_role(config: OidcSettings, values: list[str]) -> str | None:
    """The first role_mapping entry the user has, else default_role; None = refuse."""
    held = set(values)
    for value, role in config.role_mapping.items():
        if value in held:
            return role.value
    return config.default_role or None


def profile(config: OidcSettings, claims: dict[str, Any]) -> Profile:
    username = _text(claim(claims, config.username_claim))
    if not username:
        raise OidcError(f"the identity provider sent no {config.username_claim!r} claim (the user name)", 403)
    try:
        validate_username(username)
    except AccountError:
        raise OidcError(
            f"the user name {username[:80]!r} from the identity provider is not usable in Hilum "
            "(1-64 letters, digits, '.', '_', '-', '@')",
            403,
        ) from None
    group_values = _values(claim(claims, config.groups_claim))
    role_values = group_values + _values(claim(claims, config.role_claim))
    role = map_role(config, role_values)
    if role is None:
        raise OidcError(
            f"{username} has no Hilum role: none of their groups or roles is mapped (auth.oidc.role_mapping)",
            403,
        )
    # Groups name grants (a principal of at most 64 characters) and are stored comma-separated.
    usable = (g.strip() for g in group_values)
    groups = tuple(dict.fromkeys(g for g in usable if g and "," not in g and len(g) <= MAX_GROUP_LENGTH))
    groups = groups[:MAX_GROUPS]
    person_name = _text(claim(claims, config.person_name_claim)) if config.person_name_claim else None
    return Profile(
        username=username,
        display_name=_text(claim(claims, config.display_name_claim))[:200],
        person_name=person_name[:320] if person_name is not None else None,
        groups=groups,
        role=role,
    )
