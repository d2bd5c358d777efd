"""Typed settings: one TOML file plus ``HILUM_*`` environment overrides.

Build once with :func:`load_settings` and pass the object down; nothing in
Hilum imports a module-level settings instance.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from hilum.audit.settings import AuditSettings
from hilum.auth.oidc.settings import OidcSettings
from hilum.jobs.settings import JobSettings
from hilum.shares.settings import ShareSettings
from hilum.storage.settings import StorageSettings

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: AE VR, no backslash


def validate_ae_title(value: str) -> str:
    """Return a stripped AE title or raise ``ValueError`` (PS3.5 6.2, VR AE)."""
    title = value.strip()
    if not title or not _AE_TITLE.match(title):
        raise ValueError(
            f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)"
        )
    return title


class DuplicatePolicy(StrEnum):
    """What ingest does with an instance whose SOP Instance UID is already stored."""

    IGNORE = "ignore"  # keep the stored copy, answer success
    REPLACE = "replace"  # store the new copy, drop the old one
    REJECT = "reject"  # refuse the new copy with a DIMSE failure / HTTP 409


# What a known remote AE may ask of Hilum as SCP (C-ECHO is always allowed); see dimse/access.py.
Permission = Literal["store", "find", "move", "get"]
ALL_PERMISSIONS: tuple[Permission, ...] = ("store", "find", "move", "get")


class RemoteAE(BaseModel):
    """A remote DICOM node Hilum may send to (C-MOVE destination, SCU target)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a default

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: str
    # Where the node listens; also the address its associations must come from
    # (compared by resolved IP). "*": any address (such an entry cannot be sent to).
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    description: str = ""
    # Services the node may use on Hilum (all four by default, as before permissions existed).
    permissions: list[Permission] = Field(default_factory=lambda: list(ALL_PERMISSIONS))
    # Hilum's associations to this node use DICOM TLS (PS3.15 B.9).
    tls: bool = False

    _check_aet = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))

    @field_validator("permissions")
    @classmethod
    def _canonical_permissions(cls, value: list[Permission]) -> list[Permission]:
        return [p for p in ALL_PERMISSIONS if p in value]  # no duplicates, one order


class DicomSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ae_title: str = "HILUM"
    host: str = "0.0.0.0"
    # Plain (non-TLS) DICOM port; 0 = none: only tls_port listens, so a required client
    # certificate cannot be bypassed by calling the same AE title on the plain port.
    port: int = Field(default=11112, ge=0, le=65535)
    # Receiving processes, all accepting on one listening socket; 0 means one
    # per CPU core.
    workers: int = Field(default=0, ge=0, le=64)
    max_pdu_length: int = Field(default=131072, ge=0)
    # Faster pynetdicom acceptor (see dimse/fastpath.py); false = stock pynetdicom.
    fast_path: bool = True
    check_called_ae_title: bool = True
    # Empty list: any calling AE title may associate. Otherwise only these.
    allowed_calling_ae_titles: list[str] = Field(default_factory=list)
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.IGNORE
    acse_timeout: float = Field(default=30, gt=0)
    dimse_timeout: float = Field(default=60, gt=0)
    network_timeout: float = Field(default=120, gt=0)
    max_associations: int = Field(default=32, ge=1)
    # false (default): only known remote AEs (AE title + host) may associate; true admits
    # any peer with every service. See dimse/access.py and docs/tls.md.
    accept_unknown_aes: bool = False
    # DICOM TLS (PS3.15 B.9) listener, served by the same receiving processes; 0 = off.
    tls_port: int = Field(default=0, ge=0, le=65535)
    tls_certificate: str = ""  # PEM: Hilum's certificate (chain), also its client certificate
    tls_private_key: str = ""  # PEM, unencrypted
    tls_ca_certificates: str = ""  # PEM bundle: verifies client and remote server certificates
    tls_require_client_certificate: bool = False

    _check_aet = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _check_allowed(cls, value: list[str]) -> list[str]:
        return [validate_ae_title(v) for v in value]

    @model_validator(mode="after")
    def _check_tls(self) -> DicomSettings:
        if bool(self.tls_certificate) != bool(self.tls_private_key):
            raise ValueError("tls_certificate and tls_private_key must be set together")
        if not self.port and not self.tls_port:
            raise ValueError("port = 0 (no plain DICOM port) needs tls_port: Hilum would not listen")
        if self.tls_port:
            if not self.tls_certificate:
                raise ValueError("tls_port needs tls_certificate and tls_private_key")
            if self.tls_port == self.port:
                raise ValueError("tls_port must differ from port")
        if self.tls_require_client_certificate and not self.tls_ca_certificates:
            raise ValueError(
                "tls_require_client_certificate needs tls_ca_certificates to verify them with"
            )
        return self


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(default=8042, ge=1, le=65535)
    # HTTP worker processes sharing the port; 0 = one per CPU core (at most 4).
    workers: int = Field(default=0, ge=0, le=64)
    # Origins allowed to call the HTTP APIs from a browser (e.g. an OHIF viewer
    # served elsewhere): exact origins like "https://viewer.example.org", or "*".
    cors_origins: list[str] = Field(default_factory=list)
    # The public URL clients reach Hilum at (behind a proxy); empty = from the request.
    public_url: str = ""
    # Largest STOW-RS request body accepted; bigger ones get 413 and nothing is stored.
    max_upload_bytes: int = Field(default=8 * 1024**3, ge=1024)
    # Largest body of any other request (JSON for logins, jobs, users, annotations...): 413 above.
    max_request_bytes: int = Field(default=2 * 1024**2, ge=1024)
    # Seconds a request body may go without any data arriving (between chunks); a stalled
    # upload then gets 408, its connection is closed and its staging files are removed.
    body_timeout: float = Field(default=60.0, gt=0, le=3600)
    # Requests with a body (STOW-RS uploads, JSON) in progress at once from one client address,
    # per HTTP worker process; one more gets 429 with Retry-After. 0 = no limit.
    max_uploads_per_client: int = Field(default=16, ge=0)
    # QIDO-RS: results per page when the client gives no limit, and the most it may ask for.
    qido_default_limit: int = Field(default=1000, ge=1)
    qido_max_limit: int = Field(default=10000, ge=1)
    # HTTPS: PEM certificate (chain) and unencrypted private key; both empty = plain HTTP.
    tls_certificate: str = ""
    tls_private_key: str = ""

    @model_validator(mode="after")
    def _check_tls(self) -> HttpSettings:
        if bool(self.tls_certificate) != bool(self.tls_private_key):
            raise ValueError("tls_certificate and tls_private_key must be set together")
        return self


class GroupRule(BaseModel):
    """Opens every study matching ``match`` to the users of ``group`` (e.g. per site or
    department): ``match`` maps study-level attributes to DICOM matching values (single
    value, wildcard ``*``/``?``, list with ``\\``, date range), as in a C-FIND."""

    model_config = ConfigDict(extra="forbid")
    group: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    match: dict[str, str] = Field(min_length=1)

    @field_validator("match")
    @classmethod
    def _check_match(cls, value: dict[str, str]) -> dict[str, str]:
        from hilum.domain.attributes import BY_KEYWORD, Level
        from hilum.domain.errors import InvalidQuery
        from hilum.domain.query import constraint_for

        for keyword, raw in value.items():
            attr = BY_KEYWORD.get(keyword)
            if attr is None or attr.level is not Level.STUDY:
                raise ValueError(f"{keyword} is not a study-level attribute Hilum indexes")
            try:
                constraint_for(keyword, raw)
            except InvalidQuery as exc:
                raise ValueError(f"{keyword}: {exc}") from None
        return value


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Every HTTP surface needs a login, token or API key. Turning this off opens the whole
    # archive to anyone who reaches the port: only for isolated test set-ups.
    enabled: bool = True
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    token_hours: float = Field(default=12.0, gt=0, le=24 * 365)
    # Wrong passwords in a row for one user from one client address before that address
    # is locked out of that user (not others), and for how long (hilum.auth.lockout).
    lockout_attempts: int = Field(default=5, ge=1, le=100)
    lockout_minutes: float = Field(default=15.0, gt=0)
    # Account-wide back-off against guessing from many addresses: from this many wrong
    # passwords (since the user's last sign-in), addresses the user never signed in from
    # get one password check per account_backoff_seconds for that user.
    account_backoff_failures: int = Field(default=20, ge=1)
    account_backoff_seconds: float = Field(default=5.0, ge=0, le=3600)
    # Minting an API key needs the current password; users without one (single sign-on)
    # need a session opened within this many minutes.
    reauth_minutes: float = Field(default=5.0, gt=0, le=24 * 60)
    # Failed logins from one address (any accounts) within 10 minutes before it gets 429.
    max_failures_per_address: int = Field(default=30, ge=1)
    # HTTP Basic authentication (user + password on every request) for legacy DICOMweb clients.
    allow_basic: bool = False
    # Session cookies carry the Secure flag: "auto" = when the request came over HTTPS.
    cookie_secure: str = Field(default="auto", pattern="^(auto|always|never)$")
    # Study sets opened to groups by rule (site, department...): see GroupRule.
    group_rules: list[GroupRule] = Field(default_factory=list)
    # Single sign-on through OpenID Connect (hilum.auth.oidc); off by default.
    oidc: OidcSettings = Field(default_factory=OidcSettings)


class Settings(BaseSettings):
    """All of Hilum's settings. Keys are documented in ``docs/configuration.md``."""

    model_config = SettingsConfigDict(
        env_prefix="HILUM_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Path("hilum-data")
    # Let the data directory's group read what Hilum writes (a backup user, say): directories
    # 0750 and files 0640 instead of 0700 / 0600.
    data_dir_group_access: bool = False
    # SQLAlchemy URL of the index; empty = SQLite file inside data_dir.
    database_url: str = ""
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    remote_aes: list[RemoteAE] = Field(default_factory=list)
    jobs: JobSettings = Field(default_factory=JobSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    shares: ShareSettings = Field(default_factory=ShareSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    # Set by load_settings() from --config; not a key of its own.
    config_file: Path | None = Field(default=None, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence, highest first: command line, environment, TOML file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def index_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def private_mask(self) -> int:
        """The umask Hilum creates its directories and files under (0o077, or 0o027 with
        ``data_dir_group_access``)."""
        return 0o027 if self.data_dir_group_access else 0o077

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    def dicom_workers(self) -> int:
        return self.dicom.workers or max(1, os.cpu_count() or 1)

    def http_workers(self) -> int:
        return self.http.workers or max(1, min(4, os.cpu_count() or 1))


class ConfigError(Exception):
    """A configuration problem, with a message that names the offending key."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from (lowest first) the TOML file, environment, then ``overrides``.

    ``overrides`` use nested dicts for sections, e.g. ``dicom={"port": 104}``.
    Raises :class:`ConfigError` naming the key on any invalid value.
    """
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    try:
        settings: Settings = _FromFile(**_drop_none(overrides))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_file)) from None
    except ValueError as exc:  # e.g. a TOML syntax error
        raise ConfigError(f"cannot read {config_file}: {exc}") from None
    settings.config_file = config_file
    return settings


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    where = f" in {config_file}" if config_file else ""
    lines = [f"invalid configuration{where}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {key}: {message} (got {error.get('input')!r})")
    return "\n".join(lines)
