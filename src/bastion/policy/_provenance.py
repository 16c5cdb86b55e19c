"""Provenance: where the values an agent sends came from, recognised in linear time.

Every value the gateway hands an agent has a source: the run's ``input`` (from whoever started
the run), a ``trusted`` tool's result (a Tool an operator declared ``trusted: true``), or an
``untrusted`` one (every other tool's result). A value in a call's arguments that is found in
none of them is the ``agent``'s own (its code's or its model's text). ``ProvenanceIndex`` keeps,
per run, what it needs to recognise those values when they come back in arguments; a policy
requirement (``ProvenanceCheck``) names the sources an argument may come from.

What is compared is a value's *significant form*: the policy's normalization (NFKC, case
folding, invisible characters removed; ``_normalize``), reduced to its Unicode TR39 skeleton
(``_confusables``: a Cyrillic ``\\u0430`` is a Latin ``a``), keeping letters and digits only, so case,
whitespace, punctuation, full-width forms and look-alikes launder nothing. Strings are also read
through the encodings the policy decodes (percent-encoding, base64, JSON inside a string), in
results and in arguments alike.

Recognised, for a string of an argument (significant form ``s``):

* ``input`` when ``s`` occurs in the run's input: the user's value is the user's, even when a tool
  result echoes it (an injected document that repeats the user's IBAN does not taint it);
* a result's source when ``s`` equals a whole string of that result (at least ``MIN_LEAF``
  significant characters), or shares a run of ``GRAM`` significant characters with it that is not
  in the run's input. Any shared run of ``MIN_RUN`` characters or more is found for certain:
  every ``STRIDE``-th ``GRAM``-gram of a result is kept (64-bit hashes, at most ``MAX_GRAMS`` per
  run), and every ``GRAM``-gram of an argument is looked up. Shorter values (an amount, ``yes``)
  carry no result label; the input's label needs no minimum.

Cost: indexing a result is linear in its text; labeling a string is linear in the string, and
independent of how many results the run holds. A run whose results exceed ``MAX_GRAMS`` stops
indexing and from then on labels every string it cannot place as untrusted (fail closed).
Hashes are Python's (SipHash, randomized per process): an index lives in one process and is
rebuilt from the journal by the next attempt, so nothing hashed is ever stored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from ._confusables import skeleton
from ._normalize import DecodeError, Decoding, _b64, normalize, strings  # pyright: ignore[reportPrivateUsage]

Source = Literal["input", "trusted", "untrusted", "agent"]
SOURCES: tuple[Source, ...] = ("input", "trusted", "untrusted", "agent")
GRAM = 12
"""Significant characters a shared run needs before it counts as coming from a result."""
STRIDE = 8
"""Every STRIDE-th gram of a result is kept."""
MIN_RUN = GRAM + STRIDE - 1
"""A shared run this long is always found (19 significant characters)."""
MIN_LEAF = 6
"""A whole result string this long, found whole in an argument, carries the result's label."""
MAX_GRAMS = 300_000
"""Grams and whole strings kept per run (about 2.4 MB of significant result text, some 26 MB of
memory); past it, fail closed."""
MAX_INPUT_GRAMS = 200_000
MEMO_SIZE = 4096
PENDING = 8
"""Results held unindexed at most (a run without provenance rules pays little for its labels,
and holds no more than this many results in memory for them)."""
TRUSTED_RULE = "provenance/trusted"
"""The rule id journaled beside a tool call whose result is labeled trusted (the Tool was
declared ``trusted`` when it ran): replay and what-if read the label from the journal."""
DELIVERED = ("allow", "redact")
"""Decisions under which a tool's result reached the agent."""
DECODE: frozenset[Decoding] = frozenset(("percent", "base64"))
_NON_ALNUM = re.compile(r"[\W_]+")
_B64_TOKEN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
"""A base64-shaped word inside text (the policy's decoding reads whole strings only)."""
_B64_LOOSE = re.compile(r"[A-Za-z0-9+/_=\s-]+")
"""Text that could be base64 once its whitespace is removed."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a labeled value came from: a source and, for a result, the call's seq and tool."""

    source: Source
    seq: int = 0
    tool: str = ""

    def __str__(self) -> str:
        if self.source == "input":
            return "the run's input"
        if self.source == "agent":
            return "the agent's own text (in neither the run's input nor any tool result)"
        return f"seq {self.seq} (tool {self.tool!r}, {self.source})"


INPUT = Origin("input")
AGENT = Origin("agent")


@functools.cache
def _ascii_table() -> dict[int, str | None]:
    """Per ASCII character, its significant form (skeletons of ASCII fold per character)."""
    out: dict[int, str | None] = {}
    for cp in range(128):
        form = _NON_ALNUM.sub("", skeleton(normalize(chr(cp)))) if chr(cp).isalnum() else ""
        out[cp] = form or None
    return out


def significant(text: str) -> str:
    """``text`` as provenance compares it: normalized, skeleton, letters and digits only."""
    if text.isascii():
        return text.translate(_ascii_table())
    return _NON_ALNUM.sub("", skeleton(normalize(text)))


def _texts(value: Any) -> Iterator[str]:
    """Every string in ``value`` and what its encodings hide; numbers as their JSON text."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        yield str(value)
        return
    if isinstance(value, float):
        yield json.dumps(value)
        return
    if isinstance(value, str) and not _may_hide(value):
        found: Iterator[str] = iter((value,))  # what ``strings`` would yield, without its walk
    else:
        found = strings(value, DECODE)
    for item in found:
        yield item
        if len(item) > 16 and not _B64_TOKEN.fullmatch(item):
            for token in _B64_TOKEN.finditer(item):
                decoded = _b64(token.group())
                if decoded is not None:
                    yield decoded
    if isinstance(value, dict | list):
        stack: list[Any] = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                stack.extend(cast(dict[Any, Any], item).values())
            elif isinstance(item, list):
                stack.extend(cast(list[Any], item))
            elif isinstance(item, int) and not isinstance(item, bool):
                yield str(item)
            elif isinstance(item, float):
                yield json.dumps(item)


def _may_hide(text: str) -> bool:
    """Whether ``strings`` could find anything inside ``text`` (JSON, percent-encoding, base64,
    a ``data:`` URI); False only when it certainly finds nothing."""
    return (
        text.lstrip()[:1] in ("{", "[", '"')
        or "%" in text
        or "+" in text
        or (len(text) >= 8 and _B64_LOOSE.fullmatch(text) is not None)
        or "ata:" in text.lower()
    )


class ProvenanceIndex:
    """One run's labels: what the gateway handed its agent, to recognise in its arguments."""

    def __init__(self, *, max_grams: int = MAX_GRAMS) -> None:
        self.max_grams = max_grams
        self.origins: list[Origin] = []
        self._grams: dict[int, int] = {}
        """Hash of a kept gram -> index of its first origin."""
        self._also: dict[int, int] = {}
        """The same, for a gram also seen from the other of trusted and untrusted (rare)."""
        self._leaves: tuple[dict[int, int], dict[int, int]] = ({}, {})
        self._input = ""
        self._input_grams: set[int] = set()
        self.input: Any = None
        """The run's input as it was given (Rego policies see it)."""
        self.digests: dict[int, str] = {}
        """Per origin index, ``sha256:`` of its result's canonical JSON (Rego sees digests, not results)."""
        self._pending: list[tuple[Any, int]] = []
        self._memo: dict[str, frozenset[Origin]] = {}
        """Labels of strings already placed, until the next result is indexed (a run's calls
        repeat their values: the user's IBAN, a memo; a decision checks one under two rules)."""
        self.kept = 0
        self.overflow: Origin | None = None
        """The first result that could not be indexed; every unplaced string then carries it."""

    # --- what the agent was handed ----------------------------------------------------

    def set_input(self, value: Any) -> None:
        """The run's input: its values are the user's wherever else they appear."""
        self.input = value
        parts = [significant(s) for s in _texts(value)]
        self._input = "\x00".join(p for p in parts if p)
        grams = self._input_grams
        for part in parts:
            for i in range(len(part) - GRAM + 1):
                if len(grams) >= MAX_INPUT_GRAMS:
                    return
                grams.add(hash(part[i : i + GRAM]))

    def add(self, value: Any, *, seq: int, tool: str, trusted: bool) -> None:
        """A tool result handed to the agent at ``seq``; indexed when first needed."""
        if value is None:
            return
        self.origins.append(Origin("trusted" if trusted else "untrusted", seq, tool))
        self._pending.append((value, len(self.origins) - 1))
        if len(self._pending) >= PENDING:
            self._index()

    def _index(self) -> None:
        pending, self._pending = self._pending, []
        self._memo.clear()
        for value, at in pending:
            try:
                self._index_one(value, at)
            except (RecursionError, DecodeError):  # too deep or too encoded to read: fail closed
                origin = self.origins[at]
                self.overflow = self.overflow or Origin("untrusted", origin.seq, origin.tool)

    def _index_one(self, value: Any, at: int) -> None:
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        self.digests[at] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
        origins = self.origins
        origin = origins[at]
        leaves = self._leaves[1 if origin.source == "trusted" else 0]
        grams, also = self._grams, self._also
        for text in _texts(value):
            sig = significant(text)
            if len(sig) < MIN_LEAF or self.overflow is not None:
                continue
            leaves.setdefault(hash(sig), at)
            last = len(sig) - GRAM
            for i in (*range(0, last + 1, STRIDE), last) if last >= 0 else ():
                h = hash(sig[i : i + GRAM])
                first = grams.setdefault(h, at)
                if first != at and origins[first].source != origin.source:
                    also.setdefault(h, at)
            self.kept = len(grams) + len(also) + len(self._leaves[0]) + len(self._leaves[1])
            if self.kept > self.max_grams:
                self.overflow = Origin("untrusted", origin.seq, origin.tool)

    # --- labels -------------------------------------------------------------------------

    def origins_of(self, value: Any) -> tuple[Origin, ...]:
        """Where the data in ``value`` came from (sorted; ``AGENT`` alone when nowhere)."""
        if self._pending:
            self._index()
        memo = self._memo
        key = value if isinstance(value, str) else None
        if isinstance(value, int) and not isinstance(value, bool):
            key = f"\x00{value}"  # an amount: its JSON text, kept apart from strings
        if key is not None:
            known = memo.get(key)
            if known is None:
                known = self._labels(value)
                if len(memo) >= MEMO_SIZE:
                    memo.clear()
                memo[key] = known
            found = known
        else:
            found = self._labels(value)
        return tuple(sorted(found, key=_order)) if found else (AGENT,)

    def _labels(self, value: Any) -> frozenset[Origin]:
        found: set[Origin] = set()
        for text in _texts(value):
            found.update(self._place(significant(text)))
        return frozenset(found)

    def _place(self, sig: str) -> set[Origin]:
        if not sig:
            return set()
        if sig in self._input:
            return {INPUT}
        origins = self.origins
        out: set[Origin] = set()
        if len(sig) >= MIN_LEAF:
            h = hash(sig)
            for leaves in self._leaves:
                at = leaves.get(h)
                if at is not None:
                    out.add(origins[at])
        if len(sig) >= GRAM:
            grams, also, inputs = self._grams, self._also, self._input_grams
            for i in range(len(sig) - GRAM + 1):
                h = hash(sig[i : i + GRAM])
                at = grams.get(h)
                if at is None or h in inputs:
                    continue
                out.add(origins[at])
                more = also.get(h)
                if more is not None:
                    out.add(origins[more])
        if not out and self.overflow is not None and len(sig) >= MIN_LEAF:
            out.add(self.overflow)
        return out

    def results(self) -> list[dict[str, Any]]:
        """What the agent was handed so far, as digests and labels: one item per result."""
        if self._pending:
            self._index()
        return [
            {"seq": o.seq, "tool": o.tool, "source": o.source, "digest": self.digests.get(i, "")}
            for i, o in enumerate(self.origins)
        ]

    @property
    def size(self) -> int:
        """Entries held (grams, whole strings, input grams): what memory grows with."""
        if self._pending:
            self._index()
        return self.kept + len(self._input_grams)


def _order(origin: Origin) -> tuple[int, int, str]:
    return (SOURCES.index(origin.source), origin.seq, origin.tool)


# --- what a requirement checks -----------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ProvenanceCheck:
    """One requirement, compiled: from a grant's ``requireProvenance`` or a rule's ``provenance``."""

    rule_id: str
    owner: str
    """``grant 'pay'`` or ``rule 'policy/p/r'``: who requires it, for the reason."""
    paths: tuple[tuple[str, ...], ...]
    sources: frozenset[Source]
    allow: frozenset[str]
    """Significant forms of the values always accepted."""
    action: Literal["deny", "require_approval"]
    effects: frozenset[str] = frozenset()
    """For a rule: only tools declaring one of these effects (empty: every tool it covers)."""
    expires_ts: float | None = None
    wanted: str = ""
    """The sources, as the reasons name them."""

    @classmethod
    def build(
        cls,
        *,
        rule_id: str,
        owner: str,
        paths: Sequence[str],
        sources: Sequence[str],
        allow: Sequence[str],
        action: str,
        effects: Sequence[str] = (),
        expires_ts: float | None = None,
    ) -> ProvenanceCheck:
        return cls(
            rule_id=rule_id,
            owner=owner,
            paths=tuple(tuple(p.split(".")) if p not in ("", "*") else () for p in paths),
            sources=frozenset(cast(Sequence[Source], sources)),
            allow=frozenset(significant(a) for a in allow),
            action="require_approval" if action == "require_approval" else "deny",
            effects=frozenset(effects),
            expires_ts=expires_ts,
            wanted=", ".join(s for s in SOURCES if s in sources),
        )

    def fault(self, args: Mapping[str, Any], index: ProvenanceIndex | None) -> str | None:
        """Why ``args`` fail this requirement (naming the argument, the source, the seq and the
        tool its data came from), or None."""
        wanted = self.wanted
        for steps in self.paths or ((),):
            for where, value in _select(args, steps):
                if isinstance(value, str) and self.allow and significant(value) in self.allow:
                    continue
                if index is None:
                    return (
                        f"{self.owner} requires argument {where!r} to come from {wanted}, and where it "
                        "came from is not known here; denied"
                    )
                bad = [o for o in index.origins_of(value) if o.source not in self.sources]
                if bad:
                    named = "; ".join(str(o) for o in bad[:3]) + ("; ..." if len(bad) > 3 else "")
                    return (
                        f"argument {where!r} holds data from {named}; {self.owner} requires it from {wanted}"
                    )
        return None


def _select(args: Mapping[str, Any], steps: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    """(path, value) for each value at ``steps`` (``*``: any key or item); () is every argument."""
    if not steps:
        yield from args.items()
        return
    level: list[tuple[str, Any]] = [("", args)]
    for step in steps:
        nxt: list[tuple[str, Any]] = []
        for where, node in level:
            if isinstance(node, dict):
                items = cast(dict[str, Any], node).items()
                nxt.extend((f"{where}.{k}".lstrip("."), v) for k, v in items if step in ("*", k))
            elif isinstance(node, list) and (step == "*" or step.isdigit()):
                seq = cast(list[Any], node)
                picked = range(len(seq)) if step == "*" else [int(step)] if int(step) < len(seq) else []
                nxt.extend((f"{where}.{i}".lstrip("."), seq[i]) for i in picked)
        level = nxt
    yield from level
