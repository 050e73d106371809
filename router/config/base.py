"""What every config model shares: strict validation, the name pattern, secrets by reference."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

#: Secrets are given by reference only: ``env:NAME``.
SECRET_REF = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")
#: Backend and tenant names: they appear in headers, metrics labels and file names.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class ConfigError(ValueError):
    """The config is invalid; the message is one line per problem, each naming where it stands."""


class Strict(BaseModel):
    """Unknown keys are errors, and a parsed config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
