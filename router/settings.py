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

    def keys_path(self) -> str:
        from router.ledger import ledger_kind, sqlite_path

        if self.keys_db is not None:
            return self.keys_db
        return sqlite_path(self.ledger) if ledger_kind(self.ledger) == "sqlite" else "fedrouter-keys.db"
