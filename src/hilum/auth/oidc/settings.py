"""The ``[auth.oidc]`` settings: single sign-on through an OpenID Connect provider."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hilum.auth.policy import Role

_LOOPBACK_NAMES = frozenset({"localhost"})


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


class OidcSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    # The provider's issuer URL; its metadata is read from <issuer>/.well-known/openid-configuration.
    # https only (plain http is accepted for localhost, for tests and development).
    issuer: str = ""
    client_id: str = ""
    # Confidential client secret; better given as HILUM_AUTH__OIDC__CLIENT_SECRET than in the file.
    client_secret: str = Field(default="", repr=False)
    # How Hilum authenticates at the token endpoint; "none" = public client (PKCE only).
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "none"] = (
        "client_secret_basic"
    )
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    # Hilum's URL as browsers reach it; the redirect URI registered at the IdP is
    # <redirect_base_url>/api/v1/auth/oidc/callback. Empty: http.public_url, else the request's URL.
    redirect_base_url: str = ""
    label: str = Field(default="Sign in with SSO", min_length=1, max_length=80)  # the web app's button
    # Claims (a dotted path reaches into objects, e.g. "realm_access.roles").
    username_claim: str = "preferred_username"
    display_name_claim: str = "name"
    person_name_claim: str = ""  # a DICOM PN such as "HOUSE^GREGORY" (referring physicians)
    groups_claim: str = "groups"
    role_claim: str = ""  # optional second claim holding role values (e.g. Entra app "roles")
    # IdP group or role value -> Hilum role; the first entry the user has wins.
    role_mapping: dict[str, Role] = Field(default_factory=dict)
    # Role of users none of whose values is mapped; "" = refuse them.
    default_role: Role | Literal[""] = ""
    # Create a Hilum user on first sign-on; off: only users linked already may sign in.
    auto_provision: bool = True
    # Let an IdP account sign in as an existing Hilum user of the same name that no IdP
    # account is linked to yet (e.g. a local password account). Off: refused.
    link_existing: bool = False
    ca_certificates: str = ""  # PEM bundle that verifies the IdP's certificate (private CA)
    timeout: float = Field(default=10.0, gt=0, le=120)  # seconds, for each call to the IdP

    @field_validator("issuer", "redirect_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.strip().rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, value: list[str]) -> list[str]:
        scopes = [s for s in dict.fromkeys(v.strip() for v in value) if s]
        return scopes if "openid" in scopes else ["openid", *scopes]

    @model_validator(mode="after")
    def _check(self) -> OidcSettings:
        if not self.enabled:
            return self
        if not self.issuer or not self.client_id:
            raise ValueError("auth.oidc.enabled needs issuer and client_id")
        parts = urlsplit(self.issuer)
        if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname or "")):
            raise ValueError("auth.oidc.issuer must be an https URL (http only for localhost)")
        if self.token_endpoint_auth_method != "none" and not self.client_secret:
            raise ValueError(
                "auth.oidc needs client_secret (or HILUM_AUTH__OIDC__CLIENT_SECRET), "
                'or token_endpoint_auth_method = "none" for a public client'
            )
        if not self.role_mapping and not self.default_role:
            raise ValueError("auth.oidc needs role_mapping or default_role: nobody could sign in")
        if self.redirect_base_url and urlsplit(self.redirect_base_url).scheme not in ("http", "https"):
            raise ValueError("auth.oidc.redirect_base_url must be an http(s) URL")
        return self
