"""Blocked patterns, compiled once and matched on every string a value holds.

A ``Scanner`` holds the patterns of one (action, decoding) group. Each pattern is normalized
like the text it meets (see ``_normalize``). Substrings go into one Aho-Corasick automaton (a
Rust DFA: one pass over the text whatever the number of patterns, ~0.3 us for a short string,
where Python's ``re`` spends ~3 us on an alternation of 50 literals); regexes and globs are
joined into one regular expression. A clean string costs one pass of each; only a hit re-runs
the patterns one by one to name them. Strings already seen clean are remembered (a bounded set), so constant
keys like ``"query"`` are normalized once per policy, not once per call.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, cast

from ahocorasick_rs import AhoCorasick, Implementation

from bastion.api import LinearSet, glob_source, linear, literal_source

from ._confusables import skeleton, skeletons
from ._normalize import MAX_DEPTH, Decoding, forms, hides, normalize, strings

_CLEAN_CACHE = 65_536
_CLEAN_MAX_LEN = 512


class PatternError(ValueError):
    """A blocked pattern that cannot be compiled, or would match every string."""


@dataclass(frozen=True, slots=True)
class BlockedRule:
    """One blocked pattern as written, with the rule it belongs to."""

    rule_id: str
    match: str
    pattern: str


def folded(pattern: str, *, confusables: bool = False) -> str:
    """``pattern`` in the form the text it is looked for in takes."""
    norm = normalize(pattern)
    return skeleton(norm) if confusables and norm else norm


def pattern_source(match: str, pattern: str, *, confusables: bool = False) -> str:
    """The RE2 expression that finds ``pattern`` in normalized text. Raises ``RegexError`` (a
    ``ValueError``) for a regex RE2 cannot compile, ``PatternError`` for one that matches all."""
    if match == "regex":
        if confusables:
            raise PatternError("confusables applies to substring and glob patterns, not regex")
        linear(pattern, ignore_case=True)  # raises RegexError for the caller to report
        return f"(?i:{pattern})"
    text = folded(pattern, confusables=confusables)
    if not text or (match == "glob" and not text.strip("*?")):
        raise PatternError(f"{match} pattern {pattern!r} would match every string")
    if match == "substring":
        return literal_source(text)
    if match == "glob":
        return f"^{glob_source(text)}$"
    raise PatternError(f"unknown match kind {match!r}: use substring, regex or glob")


class Scanner:
    """Finds the blocked patterns of one group in any JSON value, keys and values, at any depth.

    ``decode`` names the decodings to look through; ``"confusables"`` in it compares skeletons.
    """

    def __init__(self, rules: Collection[BlockedRule], decode: Collection[Decoding]) -> None:
        self.rules = tuple(sorted(set(rules), key=lambda r: (r.rule_id, r.match, r.pattern)))
        self.decode = frozenset(decode)
        self.fold = "confusables" in self.decode
        self._decodings = self.decode - {"confusables"}
        self._forms: Callable[[str], tuple[str, ...]] = skeletons if self.fold else forms
        literals = {r: folded(r.pattern, confusables=self.fold) for r in self.rules if r.match == "substring"}
        self._literals = sorted(literals.items(), key=lambda kv: (kv[0].rule_id, kv[0].pattern))
        words = sorted(set(literals.values()))
        self._ac = AhoCorasick(words, implementation=Implementation.DFA) if words else None
        self._others = [r for r in self.rules if r.match != "substring"]
        sources = [pattern_source(r.match, r.pattern, confusables=self.fold) for r in self._others]
        self._set = LinearSet(sources) if sources else None
        self._clean: set[str] = set()
        self._hit_text = self._matcher()

    def _matcher(self) -> Callable[[str], object]:
        """The cheapest test that answers "does this normalized text hold a pattern" (truthy
        when it does): the automaton itself when there is nothing else, no wrapper to call."""
        find = self._ac.find_matches_as_indexes if self._ac is not None else None
        found = self._set.match if self._set is not None else None
        if find is not None and found is None:
            return find
        if find is None and found is not None:
            return found
        if find is not None and found is not None:
            return lambda norm: bool(find(norm)) or bool(found(norm))
        return lambda norm: False

    def _check(self, raw: str) -> bool:
        """Whether ``raw`` or anything hidden in it (JSON, or a decoding this group asks for)
        holds a blocked pattern, for a string not among those remembered clean; remembers it if
        clean. One function, not three: this is the hot path of every decision."""
        if raw:
            hit = self._hit_text
            read = self._forms(raw)
            if hit(read[0]) or (len(read) > 1 and hit(read[1])):
                return True
            if hides(raw, self._decodings):  # else nothing hidden, known without decoding anything
                hidden = itertools.islice(strings(raw, self._decodings), 1, None)  # past ``raw`` itself
                if any(hit(norm) for text in hidden for norm in self._forms(text)):
                    return True
        if len(raw) <= _CLEAN_MAX_LEN:
            clean = self._clean
            if len(clean) >= _CLEAN_CACHE:
                clean.clear()
            clean.add(raw)
        return False

    def dirty(self, raw: str) -> bool:
        return raw not in self._clean and self._check(raw)

    def scan(self, value: Any) -> bool:
        """Whether any string in ``value`` (keys included) holds a blocked pattern."""
        clean, check = self._clean, self._check
        if type(value) is dict:  # the common case, a flat object of arguments: no stack
            nested: list[Any] | None = None
            for key, val in cast(dict[Any, Any], value).items():
                if key not in clean and type(key) is str and check(key):
                    return True
                kind: type[Any] = type(val)  # pyright: ignore[reportUnknownVariableType]
                if kind is str:
                    if val not in clean and check(val):
                        return True
                elif kind is not int and kind is not float and kind is not bool and val is not None:
                    nested = nested or []
                    nested.append(val)
            return nested is not None and self._scan_deep(nested, 1)
        return self._scan_deep([value], 0)

    def _scan_deep(self, values: list[Any], depth: int) -> bool:
        clean, check = self._clean, self._check
        stack: list[tuple[Any, int]] = [(v, depth) for v in values]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, str):
                if type(item) is not str:
                    item = str(item)
                if item not in clean and check(item):
                    return True
            elif isinstance(item, dict | list | tuple):
                if depth >= MAX_DEPTH:
                    raise RecursionError(f"the value nests deeper than {MAX_DEPTH} levels")
                if isinstance(item, dict):
                    for key, val in cast(dict[Any, Any], item).items():
                        stack.append((key, depth + 1))
                        stack.append((val, depth + 1))
                else:
                    stack.extend((v, depth + 1) for v in cast(list[Any], item))
        return False

    def which(self, value: Any) -> list[tuple[BlockedRule, str]]:
        """Every (pattern, normalized text it matched) in ``value``; for reasons, not the hot path."""
        found: dict[BlockedRule, str] = {}

        def note(rule: BlockedRule, norm: str) -> None:
            if rule not in found or norm < found[rule]:
                found[rule] = norm  # the least text, so the order of keys never shows

        for raw in strings(value, ()):
            for text in strings(raw, self._decodings):
                for norm in self._forms(text):
                    for rule, literal in self._literals:
                        if literal in norm:
                            note(rule, norm)
                    if self._set is not None:
                        for index in self._set.match(norm):
                            note(self._others[index], norm)
        return sorted(found.items(), key=lambda item: (item[0].rule_id, item[0].pattern))

    def redact(self, value: Any, mask: str) -> Any:
        """``value`` with every string (key or value) that holds a blocked pattern replaced by
        ``mask``."""

        def replace(text: str) -> str:
            return mask if self.dirty(text) else text

        return _map_strings(value, replace)


def _map_strings(value: Any, fn: Callable[[str], str], depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise RecursionError(f"the value nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        # In the order of the keys, not of the dict, so colliding masks are named the same way
        # however the object was written.
        for key, val in sorted(cast(dict[Any, Any], value).items(), key=lambda kv: repr(kv[0])):
            new_key = fn(key) if isinstance(key, str) else key
            while new_key in out:
                new_key = f"{new_key}'"
            out[new_key] = _map_strings(val, fn, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_map_strings(v, fn, depth + 1) for v in cast(list[Any], value)]
    return value


def iter_strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, keys included (no decoding)."""
    return strings(value, ())
