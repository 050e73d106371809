"""Process settings: where state lives and the admin secret. Read from the CLI and environment."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_ADMIN_KEY_CHARS = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDROUTER_", extra="forbid", frozen=True)

    #: The admin API's and /metrics' bearer key. Unset turns both off; set, it must be a real secret.
    admin_key: SecretStr | None = None
    ledger: str = "sqlite:///fedrouter.db"
    #: Seconds a positive or negative API key lookup is cached; a revoked key stops working after it.
    key_cache_s: float = Field(default=10.0, ge=0)
    #: Whether a response waits for its usage record to be committed (the durability promise).
    #: Off, records are committed in batches every few milliseconds, and those a crash cuts short are lost.
    ledger_durable: bool = True
    #: Days raw usage events are kept; daily rollups (and so totals) are kept for good. None keeps all.
    ledger_retention_days: int | None = Field(default=None, ge=1)
    #: SQLite file of the API keys. Default: the ledger's file for an SQLite ledger, else fedrouter-keys.db
    #: (keys stay in SQLite when the ledger is PostgreSQL).
    keys_db: str | None = None
    #: Where state shared by gateway replicas lives: None = this process only; redis://HOST:PORT/DB.
    state: str | None = None
    #: Processes serving this port (``fedrouter serve --workers`` sets it for them). With more than
    #: one and no ``state``, rate limits and budgets could not hold, and none may be set.
    workers: int = Field(default=1, ge=1)
    #: Prefix of every key this deployment writes in the state store (one per deployment or test run).
    state_prefix: str = "fedrouter:"
    #: Before planning, ejections read from the state store older than this are read again.
    state_freshness_ms: float = Field(default=5.0, ge=0)

    @field_validator("admin_key")
    @classmethod
    def _admin_key_is_a_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty key once matched an empty bearer and opened the admin API to anyone. Kept
        stripped, as the bearer it is compared with is, so a stray newline in an env file is no
        second key."""
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if len(key) < MIN_ADMIN_KEY_CHARS:
            what = "empty" if not key else f"{len(key)} characters long"
            raise ValueError(
                f"FEDROUTER_ADMIN_KEY is set but {what}: give at least {MIN_ADMIN_KEY_CHARS} characters, "
                "or unset it to turn the admin API and /metrics off"
            )
        return SecretStr(key)

    def keys_path(self) -> str:
        from router.ledger import ledger_kind, sqlite_path

        if self.keys_db is not None:
            return self.keys_db
        return sqlite_path(self.ledger) if ledger_kind(self.ledger) == "sqlite" else "fedrouter-keys.db"
