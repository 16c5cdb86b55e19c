"""The part of a what-if that runs operator-supplied policy over recorded agent values.

It runs in an ``Evaluator`` child process (``_evaluator``), under a time budget: everything it
needs is passed in (no database, no Bastion), and what it returns is plain data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._engine import compile_policy
from ._whatif import RecordedCall, rejudge


def judge(
    policies: Sequence[dict[str, Any]], grants: Sequence[dict[str, Any]], recorded: Sequence[RecordedCall]
) -> dict[str, Any]:
    """Compile the merged policy and re-judge the recorded calls under it."""
    policy = compile_policy(list(policies), list(grants), strict=True)
    changes = rejudge(list(recorded), policy)
    return {
        "policyVersion": policy.version,
        "calls": len(recorded),
        "changes": [c.to_record() for c in changes],
    }
