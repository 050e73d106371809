"""From the validated config to live parts: backend descriptions and their providers."""

from __future__ import annotations

from collections.abc import Iterable

from providers import registry
from providers.base import BackendInfo, Provider
from router.config import BackendConfig, FederationConfig
from router.fleet.pricing import PriceMap


def backend_info(cfg: BackendConfig, prices: PriceMap) -> BackendInfo:
    """A backend's description; undeclared prices of known commercial models come from the
    price map litellm ships, looked up by the name the backend knows the model by."""
    model_prices: dict[str, tuple[float, float]] = {}
    for public, upstream in cfg.model_map().items():
        if cfg.price is not None:
            model_prices[public] = (cfg.price.input, cfg.price.output)
        elif (known := prices.lookup(upstream)) is not None:
            model_prices[public] = known
    return BackendInfo(
        name=cfg.name,
        backend_class=cfg.backend_class,
        type=cfg.type,
        models=cfg.model_map(),
        zone=cfg.zone,
        prices=model_prices,
        joules_per_token=cfg.energy.joules_per_token if cfg.energy else None,
        max_concurrency=cfg.max_concurrency,
    )


def unpriced(infos: Iterable[BackendInfo]) -> list[str]:
    """The models backends serve with no price, none declared and none in litellm's price map:
    their requests are recorded at cost 0. Said at start-up, so that nobody bills zero unknowingly."""
    return [
        f"backend {info.name}: model {public} ({upstream}) has no price: none is declared and litellm's "
        "price map does not know it, so its requests are recorded at cost 0 (declare "
        "price: {input: 0, output: 0} if it is free)"
        for info in infos
        for public, upstream in info.models.items()
        if public not in info.prices
    ]


def build_providers(config: FederationConfig, prices: PriceMap) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for cfg in config.backends:
        providers[cfg.name] = registry.build(
            cfg.type,
            backend_info(cfg, prices),
            cfg.base_url,
            cfg.resolved_api_key(),
            timeouts=cfg.timeouts.value(),
            limits=cfg.limits(),
        )
    return providers


def stream_usage_backends(config: FederationConfig) -> frozenset[str]:
    return frozenset(b.name for b in config.backends if getattr(b, "stream_usage", True))
