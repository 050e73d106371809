"""Process settings: where state lives and the admin secret. Read from the CLI and environment."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDROUTER_", extra="forbid", frozen=True)

    admin_key: SecretStr | None = None
    ledger: str = "sqlite:///fedrouter.db"
    #: Seconds a positive or negative API key lookup is cached; a revoked key stops working after it.
    key_cache_s: float = Field(default=10.0, ge=0)
