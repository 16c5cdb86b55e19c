"""The gateway: the single enforcement point between a sandbox and the world."""

from ._approvals import STATES as APPROVAL_STATES
from ._approvals import Approval, ApprovalState, ApprovalStore
from ._approvals import metadata as approvals_metadata
from ._gateway import Attempt, EffectLease, Gateway, GatewaySession
from ._metrics import GatewayMetrics
from ._policy import POLICY_KINDS, STAMP_SQL, replace_policy_stamp
from ._policy import metadata as policy_metadata
from ._resources import ResourceReader
from ._scrub import Redactor
from ._secrets import SecretResolver

__all__ = [
    "APPROVAL_STATES",
    "POLICY_KINDS",
    "STAMP_SQL",
    "Approval",
    "ApprovalState",
    "ApprovalStore",
    "Attempt",
    "EffectLease",
    "Gateway",
    "GatewayMetrics",
    "GatewaySession",
    "Redactor",
    "ResourceReader",
    "SecretResolver",
    "approvals_metadata",
    "policy_metadata",
    "replace_policy_stamp",
]
