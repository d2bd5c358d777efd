"""Settings of share links (the ``[shares]`` section of the configuration)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ShareSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Users with study.share may create share links; false refuses new links and every
    # link and session already handed out.
    enabled: bool = True
    # Lifetime of a link when its creator does not say, and the longest allowed (30 days).
    default_hours: float = Field(default=72.0, gt=0)
    max_hours: float = Field(default=24.0 * 30, gt=0, le=24.0 * 366)
    # Wrong PINs in a row before a link locks for good (its creator makes a new one).
    pin_attempts: int = Field(default=5, ge=1, le=100)

    @model_validator(mode="after")
    def _check_hours(self) -> ShareSettings:
        if self.default_hours > self.max_hours:
            raise ValueError("default_hours cannot be longer than max_hours")
        return self
