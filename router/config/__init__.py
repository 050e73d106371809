"""The federation config file: its typed, strictly validated form and its loader.

The config is validated once, at the edge; past this package the gateway only sees these typed
objects. Unknown keys are errors (``extra="forbid"``) and every message names the key and where it
stands, so a typo never silently becomes a default. One module per section: ``backends``,
``tenants``, ``routing`` (and client limits), and ``federation`` for the whole file.
"""

from router.config.backends import (
    BackendConfig,
    Energy,
    Hardware,
    LiteLLMBackendConfig,
    OpenAIBackendConfig,
    Price,
    Timeouts,
)
from router.config.base import ConfigError
from router.config.federation import FederationConfig, load_config, parse_config
from router.config.routing import CarbonConfig, EjectionPolicy, HedgingConfig, LimitsConfig, RetryBudget, RoutingConfig
from router.config.tenants import Budget, RateLimits, TenantConfig

__all__ = [
    "BackendConfig",
    "Budget",
    "CarbonConfig",
    "ConfigError",
    "EjectionPolicy",
    "Energy",
    "FederationConfig",
    "Hardware",
    "HedgingConfig",
    "LimitsConfig",
    "LiteLLMBackendConfig",
    "OpenAIBackendConfig",
    "Price",
    "RateLimits",
    "RetryBudget",
    "RoutingConfig",
    "TenantConfig",
    "Timeouts",
    "load_config",
    "parse_config",
]
