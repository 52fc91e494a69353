"""The plane's operate lane wired into the app: health records and events, webhook delivery,
support bundles (docs/operate.md). create_app calls setup_operate once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from mgmtplane.events import DOWN_AFTER_MIN
from mgmtplane.health import STORE_KEY, HealthStore, setup_health
from mgmtplane.hub import HUB_KEY
from mgmtplane.registry import Registry
from mgmtplane.support import SupportDesk, setup_support
from mgmtplane.webhook import WebhookConfig, WebhookSender


@dataclass(frozen=True)
class OperateConfig:
    """The `serve` options of the operate lane."""

    webhook: WebhookConfig | None = None
    down_after: float = DOWN_AFTER_MIN  # seconds without a record before an appliance is down


def setup_operate(app: web.Application, state_dir: Path, registry: Registry, config: OperateConfig) -> None:
    """Register the health and support-offer handlers with the hub, and their routes."""
    hub = app[HUB_KEY]
    sender = WebhookSender(config.webhook, state_dir) if config.webhook is not None else None
    store = HealthStore(state_dir, hub, registry, sender, down_after=config.down_after)
    setup_health(app, store)
    setup_support(app, SupportDesk(state_dir, hub, store))


def health_summary(app: web.Application, gateway_id: str) -> dict[str, object] | None:
    """The one-line health of a gateway for the gateway list (None when the lane is not set up)."""
    store = app.get(STORE_KEY)
    return store.summary(gateway_id) if store is not None else None
