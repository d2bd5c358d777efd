"""Talking to the OpenID Connect provider: discovery, authorization request,
code exchange, ID-token validation and userinfo.

The protocol pieces are authlib's (authorization request, PKCE S256, token
request and client authentication, ID-token claim rules) and joserfc's (JWS
signatures, JWKS); the HTTP calls are plain httpx (authlib's httpx integration
is moving to another HTTP package).

One :class:`OidcClient` per HTTP process; it caches the provider's metadata and
signing keys (an ID token signed with a key it does not know makes it fetch the
keys again once: key rotation). Nothing about a sign-on in progress is kept
here: that is in the index (see :mod:`hilum.auth.oidc.accounts`), because the
callback may reach another HTTP process than the one that sent the browser away.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from hilum.auth.oidc.settings import OidcSettings, _is_loopback
from hilum.domain.errors import HilumError

METADATA_TTL = 3600.0  # seconds a provider's metadata and keys are reused
CLOCK_LEEWAY = 60  # seconds of clock difference tolerated on exp / iat
# Signature algorithms an ID token may use: asymmetric only (never "none", and no
# HMAC, whose key would be the client secret).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"}
)


class OidcError(HilumError):
    """A sign-on that cannot go on; the message is safe to show the user."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class SignOn:
    """What the provider said about the user: validated ID-token claims merged with userinfo."""

    issuer: str
    subject: str
    claims: dict[str, Any]


def _unreachable(exc: Exception) -> OidcError:
    return OidcError(f"the identity provider cannot be reached ({type(exc).__name__})", 502)


def _secure(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname or ""))


class OidcClient:
    def __init__(self, config: OidcSettings) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None

    # -- HTTP to the provider ---------------------------------------------------------
    def _http(self) -> httpx.Client:
        verify: Any = self.config.ca_certificates or True
        return httpx.Client(timeout=self.config.timeout, verify=verify, follow_redirects=False)

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            with self._http() as http:
                reply = http.get(url, headers={"Accept": "application/json"})
            reply.raise_for_status()
            data = reply.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise _unreachable(exc) from None
        if not isinstance(data, dict):
            raise OidcError("the identity provider answered something that is not a JSON object", 502)
        return data

    def metadata(self) -> dict[str, Any]:
        """The provider's metadata (OpenID Connect Discovery 1.0, section 4)."""
        with self._lock:
            if self._metadata is not None and time.monotonic() - self._metadata_at < METADATA_TTL:
                return self._metadata
        data = self._get_json(f"{self.config.issuer}/.well-known/openid-configuration")
        # Discovery 4.3: the issuer in the metadata must be exactly the one configured.
        if data.get("issuer") != self.config.issuer:
            raise OidcError("the identity provider's metadata names another issuer", 502)
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            url = data.get(key)
            if not isinstance(url, str) or not _secure(url):
                raise OidcError(f"the identity provider's {key} is missing or not https", 502)
        with self._lock:
            self._metadata, self._metadata_at = data, time.monotonic()
            self._keys = None
        return data

    def _key_set(self, refresh: bool = False) -> KeySet:
        with self._lock:
            if self._keys is not None and not refresh:
                return self._keys
        found = self._get_json(self.metadata()["jwks_uri"])
        try:
            keys = KeySet.import_key_set(found)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError):
            raise OidcError("the identity provider's signing keys cannot be read", 502) from None
        with self._lock:
            self._keys = keys
        return keys

    # -- the authorization code flow ---------------------------------------------------
    def authorization_url(self, *, redirect_uri: str, state: str, nonce: str, code_verifier: str) -> str:
        """Where to send the browser (OIDC Core 3.1.2.1, PKCE S256: RFC 7636)."""
        endpoint = self.metadata()["authorization_endpoint"]
        return str(
            prepare_grant_uri(
                endpoint,
                client_id=self.config.client_id,
                response_type="code",
                redirect_uri=redirect_uri,
                scope=self.config.scopes,
                state=state,
                nonce=nonce,
                code_challenge=create_s256_code_challenge(code_verifier),
                code_challenge_method="S256",
            )
        )

    def check_response_issuer(self, iss: str | None) -> None:
        """RFC 9207: the authorization response names its issuer (mix-up attacks)."""
        metadata = self.metadata()
        if iss is None:
            if metadata.get("authorization_response_iss_parameter_supported"):
                raise OidcError("the identity provider's answer does not name its issuer")
            return
        if iss != self.config.issuer:
            raise OidcError("the answer came from another identity provider")

    def _redeem(self, url: str, *, code: str, redirect_uri: str, code_verifier: str) -> dict[str, Any]:
        """The token request (RFC 6749 4.1.3, RFC 7636 4.5) and its answer."""
        config = self.config
        body = prepare_token_request(
            "authorization_code", code=code, redirect_uri=redirect_uri, code_verifier=code_verifier
        )
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        client_auth = ClientAuth(config.client_id, config.client_secret, config.token_endpoint_auth_method)
        url, headers, body = client_auth.prepare("POST", url, headers, body)
        try:
            with self._http() as http:
                reply = http.post(url, content=body, headers=headers)
            answer = reply.json()
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise OidcError(f"the identity provider's token endpoint answered {reply.status_code}", 502)
        if reply.status_code != 200 or "error" in answer:
            raise OidcError(f"the identity provider refused the code ({str(answer.get('error'))[:100]})")
        return answer

    def exchange(self, *, code: str, redirect_uri: str, code_verifier: str, nonce: str) -> SignOn:
        """Redeem the code, validate the ID token, merge the userinfo claims."""
        metadata = self.metadata()
        token = self._redeem(
            metadata["token_endpoint"], code=code, redirect_uri=redirect_uri, code_verifier=code_verifier
        )
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("the identity provider sent no ID token (is the 'openid' scope allowed?)")
        access_token = token.get("access_token")
        claims = self.validate_id_token(
            id_token, nonce=nonce, access_token=access_token if isinstance(access_token, str) else None
        )
        userinfo_url = metadata.get("userinfo_endpoint")
        if isinstance(userinfo_url, str) and isinstance(access_token, str) and _secure(userinfo_url):
            claims = {**self._userinfo(userinfo_url, access_token, claims["sub"]), **claims}
        return SignOn(issuer=self.config.issuer, subject=str(claims["sub"]), claims=claims)

    def validate_id_token(
        self, id_token: str, *, nonce: str, access_token: str | None = None
    ) -> dict[str, Any]:
        """The claims of a valid ID token (OIDC Core 3.1.3.7); OidcError otherwise.

        Checks the signature against the provider's keys (asymmetric algorithms only),
        iss, aud (and azp), exp, iat, nonce, and at_hash when present.
        """
        if not nonce:
            raise OidcError("no nonce to check the ID token against")
        advertised = self.metadata().get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [a for a in advertised if a in ASYMMETRIC_ALGORITHMS]
        registry = JWSRegistry(algorithms=algorithms)
        try:
            try:
                decoded = jwt.decode(id_token, self._key_set(), registry=registry)
            except InvalidKeyIdError:
                decoded = jwt.decode(id_token, self._key_set(refresh=True), registry=registry)
        except (JoseError, ValueError, TypeError):
            raise OidcError("the ID token's signature is not valid") from None
        options: dict[str, Any] = {
            "iss": {"essential": True, "value": self.config.issuer},
            "aud": {"essential": True, "value": self.config.client_id},
            "sub": {"essential": True},
            "exp": {"essential": True},
        }
        params = {"nonce": nonce, "client_id": self.config.client_id}
        if access_token:
            params["access_token"] = access_token
        claims = CodeIDToken(decoded.claims, decoded.header, options, params)
        try:
            claims.validate(leeway=CLOCK_LEEWAY)
        except JoseError as exc:
            raise OidcError(f"the ID token is not valid: {exc.description or exc.error}") from None
        return dict(claims)

    def _userinfo(self, url: str, access_token: str, subject: Any) -> dict[str, Any]:
        try:
            with self._http() as http:
                reply = http.get(url, headers={"Authorization": f"Bearer {access_token}",
                                               "Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from None
        json_answer = reply.headers.get("content-type", "").startswith("application/json")
        if reply.status_code != 200 or not json_answer:
            return {}  # signed (JWT) or refused userinfo: go on with the ID token's claims
        try:
            data = reply.json()
        except ValueError:
            return {}
        if not isinstance(data, dict):
            return {}
        # OIDC Core 5.3.2: userinfo of another subject must not be used.
        if data.get("sub") != subject:
            raise OidcError("the identity provider's userinfo is about another user")
        return data
