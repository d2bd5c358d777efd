"""Settings of the job runner (the ``[jobs]`` section of the configuration).

Until ``Settings`` declares a ``jobs`` field, :func:`job_settings` falls back
to these defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # config.py may import JobSettings from here
    from hilum.config import Settings


class JobSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Jobs one Hilum node runs at the same time.
    workers: int = Field(default=2, ge=1, le=64)
    # How often idle runners look for queued jobs (a job posted to this node starts at once).
    poll_interval: float = Field(default=2.0, gt=0)
    # Defaults for jobs that don't say: runs before a job is failed, and the delay
    # before the first automatic retry (doubled for each further one, up to max_retry_delay).
    max_attempts: int = Field(default=5, ge=1, le=100)
    retry_delay: float = Field(default=10.0, ge=0)
    max_retry_delay: float = Field(default=600.0, ge=0)
    # Progress is saved at most this often (and at the end of every step).
    progress_interval: float = Field(default=1.0, gt=0)
    # A running job's node refreshes its claim this often; a job whose claim is older
    # than stale_after (a crashed node sharing the index) is queued again by any node.
    heartbeat_interval: float = Field(default=5.0, gt=0)
    stale_after: float = Field(default=60.0, gt=0)
    # Instances sent per association by a store job.
    batch_size: int = Field(default=200, ge=1, le=10000)
    # ACSE timeout of Hilum's associations (DIMSE and network timeouts are 4x this).
    timeout: float = Field(default=30.0, gt=0)
    # How often the runner does its housekeeping: deleting the de-identified copies of
    # share links that expired (revoked links lose theirs at once).
    housekeeping_interval: float = Field(default=300.0, gt=0)


def job_settings(settings: Settings) -> JobSettings:
    configured = getattr(settings, "jobs", None)
    if configured is None:
        return JobSettings()
    if isinstance(configured, JobSettings):
        return configured
    return JobSettings.model_validate(configured, from_attributes=True)
