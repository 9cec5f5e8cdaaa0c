"""One module per server family: routes, auth, task rendering and error answers."""

from __future__ import annotations

from ._base import Dialect
from .midjourney_proxy import MidjourneyProxyDialect
from .quickrouter import QuickRouterDialect
from .trueai import TrueAIDialect

__all__ = ("DIALECT_CLASSES", "Dialect")

#: ``SimulatorConfig.dialect`` -> the class implementing it.
DIALECT_CLASSES: dict[str, type[Dialect]] = {
    "quickrouter": QuickRouterDialect,
    "midjourney-proxy": MidjourneyProxyDialect,
    "trueai": TrueAIDialect,
}
