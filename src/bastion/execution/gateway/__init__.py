"""The gateway: the single enforcement point between a sandbox and the world."""

from ._gateway import Attempt, Gateway, GatewaySession
from ._metrics import GatewayMetrics
from ._resources import ResourceReader
from ._scrub import Redactor
from ._secrets import SecretResolver

__all__ = [
    "Attempt",
    "Gateway",
    "GatewayMetrics",
    "GatewaySession",
    "Redactor",
    "ResourceReader",
    "SecretResolver",
]
