"""Settings of the storage area: ``[storage]`` and ``[storage.encryption]``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class EncryptionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Encrypt every newly stored file (AES-256-GCM, per-file data keys wrapped by the
    # master key). Files stored before stay readable; `hilum keys encrypt-existing`
    # encrypts them.
    enabled: bool = False
    # The master key: a file written by `hilum keys generate` (mode 0600) ...
    key_file: str = ""
    # ... or, when key_file is empty, this environment variable (base64 or hex; several
    # keys comma-separated: the first is the current one, the others only decrypt).
    key_env: str = "HILUM_MASTER_KEY"
    # Earlier master keys that still open files not yet re-wrapped (during a rotation).
    previous_key_files: list[str] = Field(default_factory=list)
    # Read files that are not encrypted (stored before encryption was enabled). Once
    # `hilum keys encrypt-existing` has run, false refuses any plaintext file.
    allow_plaintext: bool = True

    @field_validator("key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if value and not value.replace("_", "").isalnum():
            raise ValueError("must be an environment variable name")
        return value


class StorageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)
