"""A run's provenance labels, derived from its journal (``bastion.policy._provenance``).

The session labels what it hands its agent: the run's input, and each delivered tool result
with its seq, its tool and whether the tool is trusted. The labels are built from the journal
the first time a policy needs them (a provenance requirement or a Rego module: a namespace
without either pays nothing), then kept up to date call by call. A resumed attempt builds them
the same way, from the journaled responses, never from process memory: whether a result was
trusted is journaled with the call itself (a reason ``provenance/trusted``), so an operator who
declares a tool trusted later does not launder what it returned earlier, and one who takes the
declaration back does not taint it. Model outputs carry no label of their own: what an agent's
model repeats from a result is recognised as that result's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from bastion.policy import DELIVERED, TRUSTED_RULE, ProvenanceIndex

Handed = tuple[int, str, str, Sequence[str], Any, Mapping[str, Any] | None]
"""One journaled tool call: seq, tool, decision, rule ids, response, error."""


class RunLabels:
    def __init__(
        self,
        run_input: Any,
        tools: Mapping[str, Mapping[str, Any]],
        history: Callable[[], Iterable[Handed]],
    ) -> None:
        self._input = run_input
        self._tools = tools
        self._history = history
        self._index: ProvenanceIndex | None = None

    def index(self) -> ProvenanceIndex:
        """The labels of everything handed to the agent so far, built from the journal once."""
        if self._index is None:
            index = ProvenanceIndex()
            index.set_input(self._input)
            self._index = index
            for handed in self._history():
                self.handed(*handed)
        return self._index

    def trusted_reason(self, tool: str) -> dict[str, str] | None:
        """The reason journaled with a call to ``tool`` when its Tool (of this tenant and
        namespace: the session's own manifests) is declared trusted."""
        manifest = self._tools.get(tool)
        if manifest is None or not manifest.get("spec", {}).get("trusted", False):
            return None
        return {
            "rule": TRUSTED_RULE,
            "text": f"tool {tool!r} is declared trusted: its result is labeled trusted",
        }

    def handed(
        self,
        seq: int,
        tool: str,
        effect: str,
        rule_ids: Sequence[str],
        response: Any,
        error: Mapping[str, Any] | None,
    ) -> None:
        """Label what a journaled tool call handed the agent (live and on replay alike); before
        the labels are first needed, nothing (they will be built from the journal)."""
        index = self._index
        if index is None:
            return
        if effect in DELIVERED and response is not None:
            index.add(response, seq=seq, tool=tool, trusted=TRUSTED_RULE in rule_ids)
        if error is not None and error.get("type") == "tool_call_failed":
            # A failure's reason can carry what the tool's server said: untrusted text too.
            index.add(dict(error), seq=seq, tool=tool, trusted=False)
