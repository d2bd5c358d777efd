"""Settings of the audit trail (the ``[audit]`` section of the configuration)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AuditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Record audit messages at all. Off only for benchmarks: an archive of patient
    # data without an audit trail does not meet HIPAA / GDPR accountability rules.
    enabled: bool = True
    # AuditSourceID of every message (PS3.15 A.5.1): which Hilum node reported it.
    # Empty = "<AE title>@<host name>".
    source_id: str = Field(default="", max_length=256)
    # AuditEnterpriseSiteID (optional): the site / organization that runs this node.
    enterprise_site_id: str = Field(default="", max_length=256)
    # Records are written by a background thread in batches, at least this often (seconds).
    flush_interval: float = Field(default=0.5, gt=0, le=1.0)
    # Records waiting to be written, per process; more are counted, logged and reported
    # by a Security Alert record, never dropped silently.
    queue_size: int = Field(default=20000, ge=100)
    # Instances of one study moved between the same two parties within this many
    # seconds of each other are reported in one record (a study sent by C-STORE, a
    # viewer fetching a study's frames), at the latest after max_aggregate_seconds.
    aggregate_seconds: float = Field(default=2.0, ge=0, le=60)
    max_aggregate_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Forward every record to a syslog collector (an audit record repository):
    # udp://host:514 (RFC 5426), tcp://host:601 (RFC 6587) or tls://host:6514 (RFC 5425).
    syslog_url: str = ""
    # TLS: the CA certificate(s) the collector's certificate must chain to (default: the
    # system's trust store), and this node's client certificate and key (mutual TLS, as
    # IHE ATNA asks).
    syslog_ca_file: Path | None = None
    syslog_cert_file: Path | None = None
    syslog_key_file: Path | None = None
    # Messages waiting for a collector that does not answer; the oldest are dropped
    # (and counted) past this. The database keeps every record regardless.
    syslog_queue_size: int = Field(default=10000, ge=10)

    @field_validator("syslog_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("udp", "tcp", "tls"):
            raise ValueError("syslog_url must start with udp://, tcp:// or tls://")
        if not parts.hostname:
            raise ValueError("syslog_url needs a host, e.g. tls://collector.example.org:6514")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"syslog_url: {exc}") from None
        return value
