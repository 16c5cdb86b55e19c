"""Every pattern a user writes, compiled for matching in time linear in the text (RE2).

Python's ``re`` backtracks: ``^(a+)+$`` takes seconds on thirty characters, and a glob turned
into a chain of ``.*`` minutes on sixty. So every regular expression an operator or a developer
writes (a blocked pattern, a grant's argument pattern, a rule's tool glob, a JSON Schema's
``pattern`` and ``patternProperties``) is compiled here with RE2, which has no backtracking.
What RE2 cannot compile (backreferences, lookaround, possessive quantifiers) is refused when
the resource is applied, with the field that holds it, never accepted and matched some other way.

``schema_validator`` is a Draft 2020-12 validator whose ``pattern``, ``patternProperties`` and
``additionalProperties`` match with RE2; ``check_schema`` refuses a schema with a pattern RE2
cannot compile, and ``unevaluatedProperties`` beside ``patternProperties`` (jsonschema would
match those with ``re``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, cast

import re2  # pyright: ignore[reportMissingTypeStubs]
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import SchemaError, ValidationError

MAX_PATTERN = 4096
_MAX_MEM = 8 << 20
"""RE2's memory for one compiled pattern; a pattern that needs more (``(a{1000}){1000}``) is refused."""


class RegexError(ValueError):
    """A pattern RE2 cannot compile; the message says why and what to write instead."""


class _Compiled(Protocol):
    def search(self, text: bytes) -> object | None: ...
    def fullmatch(self, text: bytes) -> object | None: ...


class _Set(Protocol):
    def Add(self, pattern: str) -> int: ...
    def Compile(self) -> None: ...
    def Match(self, text: bytes) -> list[int] | None: ...


def _utf8(text: str) -> bytes:
    """The bytes RE2 reads. A lone surrogate (JSON allows ``"\\ud800"``) is passed as the bytes
    it would be rather than raising: it matches no pattern character but itself."""
    return text.encode("utf-8", "surrogatepass")


def _options(*, ignore_case: bool = False) -> Any:
    options: Any = re2.Options()  # pyright: ignore[reportUnknownMemberType]
    options.log_errors = False
    options.max_mem = _MAX_MEM
    options.case_sensitive = not ignore_case
    return options


def _why(exc: Exception) -> str:
    text = exc.args[0] if exc.args else str(exc)
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


def _refuse(pattern: str, exc: Exception) -> RegexError:
    why = _why(exc)
    hint = ""
    if any(word in why for word in ("escape", "perl operator", "repeat")):
        hint = (
            "; backreferences (\\1), lookaround ((?=, (?!, (?<=) and possessive quantifiers are not supported"
        )
    return RegexError(f"pattern {pattern!r} cannot be matched in linear time (RE2: {why}){hint}")


class LinearRegex:
    """One pattern, matched by RE2."""

    __slots__ = ("_rx", "pattern")

    def __init__(self, pattern: str, *, ignore_case: bool = False) -> None:
        if len(pattern) > MAX_PATTERN:
            raise RegexError(f"pattern is {len(pattern)} characters long; the most is {MAX_PATTERN}")
        self.pattern = pattern
        try:
            self._rx = cast(_Compiled, re2.compile(pattern, _options(ignore_case=ignore_case)))  # pyright: ignore[reportUnknownMemberType]
        except re2.error as exc:  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
            raise _refuse(pattern, cast(Exception, exc)) from None

    def search(self, text: str) -> bool:
        return self._rx.search(_utf8(text)) is not None

    def fullmatch(self, text: str) -> bool:
        return self._rx.fullmatch(_utf8(text)) is not None

    def __repr__(self) -> str:
        return f"LinearRegex({self.pattern!r})"


class LinearSet:
    """Many patterns searched in one pass; ``match`` says which of them are found."""

    __slots__ = ("_set", "patterns")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        for pattern in self.patterns:
            LinearRegex(pattern)  # one pattern's own error, rather than the set's
        built = cast(_Set, re2.Set.SearchSet(_options()))  # pyright: ignore[reportUnknownMemberType]
        try:
            for pattern in self.patterns:
                built.Add(pattern)
            built.Compile()
        except re2.error as exc:  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
            raise RegexError(
                f"the patterns together are too large for RE2 ({_why(cast(Exception, exc))})"
            ) from None
        self._set = built

    def match(self, text: str) -> list[int]:
        """The indices of the patterns found in ``text`` (unordered); empty if none."""
        return self._set.Match(_utf8(text)) or []


@functools.lru_cache(maxsize=4096)
def linear(pattern: str, *, ignore_case: bool = False) -> LinearRegex:
    """``pattern`` compiled by RE2 (cached); raises ``RegexError`` naming what RE2 refused."""
    return LinearRegex(pattern, ignore_case=ignore_case)


def check_regex(pattern: str) -> str:
    """``pattern`` if RE2 compiles it; for pydantic validators."""
    linear(pattern)
    return pattern


def literal_source(text: str) -> str:
    """The RE2 expression matching ``text`` literally."""
    return cast(str, re2.escape(text))  # pyright: ignore[reportUnknownMemberType]


def glob_source(glob: str) -> str:
    """The RE2 expression matching a whole string against ``glob`` (``*`` any run, ``?`` one
    character, anything else literal)."""
    parts = ["(?s:"]
    for char in glob:
        parts.append(".*" if char == "*" else "." if char == "?" else literal_source(char))
    parts.append(")")
    return "".join(parts)


# --- Rego ----------------------------------------------------------------------------------

_REGO_BACKTRACKING = re2.compile(  # pyright: ignore[reportUnknownMemberType]
    r"\b(regex\.(?:match|find_n|find_all_string_submatch_n|replace|split|template_match|globs_match)"
    r"|re_match|glob\.match)\s*\("
)


def rego_backtracking(source: str) -> list[str]:
    """The builtins ``source`` calls that match a pattern by backtracking in regopy (rego-cpp):
    ``regex.match("^(a+)+$", x)`` takes seconds on 26 characters, ``glob.match`` with a dozen
    stars too. Comments are skipped; a call written inside a string literal is counted (refused
    rather than missed)."""
    code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
    found = cast(Iterator[Any], _REGO_BACKTRACKING.finditer(code))  # pyright: ignore[reportUnknownMemberType]
    return sorted({str(m.group(1)) for m in found})


def check_rego(source: str) -> str:
    """``source`` unless it calls a backtracking pattern builtin; for pydantic validators."""
    calls = rego_backtracking(source)
    if calls:
        raise ValueError(
            f"the Rego module calls {', '.join(calls)}, which regopy matches by backtracking (one "
            "pattern can stall every call for seconds); match arguments with a rule's blockedPatterns "
            "(match: regex or glob) or a grant's argumentPatterns or requireArguments, which use RE2"
        )
    return source


# --- JSON Schema ---------------------------------------------------------------------------


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not linear(pattern).search(instance):
        yield ValidationError(f"{instance[:200]!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        rx = linear(pattern)
        for key, value in instance.items():
            if rx.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> Iterator[str]:
    properties: Mapping[str, Any] = schema.get("properties", {})
    patterns = [linear(p) for p in schema.get("patternProperties", {})]
    for key in instance:
        if key not in properties and not any(rx.search(key) for rx in patterns):
            yield key


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = sorted(set(_additional(instance, schema)), key=str)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        if "patternProperties" in schema:
            patterns = ", ".join(repr(p) for p in sorted(schema["patternProperties"]))
            verb = "does" if len(extras) == 1 else "do"
            yield ValidationError(
                f"{', '.join(repr(e) for e in extras)} {verb} not match any of the regexes: {patterns}"
            )
        else:
            was = "was" if len(extras) == 1 else "were"
            yield ValidationError(
                f"Additional properties are not allowed ({', '.join(repr(e) for e in extras)} {was} unexpected)"
            )


_LinearValidator = cast(
    type[Draft202012Validator],
    validators.extend(  # pyright: ignore[reportUnknownMemberType]
        Draft202012Validator,
        {
            "pattern": _pattern,
            "patternProperties": _pattern_properties,
            "additionalProperties": _additional_properties,
        },
    ),
)


def _regex_format(instance: object) -> bool:
    if isinstance(instance, str):
        linear(instance)
    return True


_FORMATS = FormatChecker(formats=())
_FORMATS.checkers = {
    **Draft202012Validator.FORMAT_CHECKER.checkers,
    "regex": (_regex_format, (RegexError,)),
}


def _walk(node: Any) -> Iterator[Mapping[str, Any]]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            mapping = cast(dict[str, Any], item)
            yield mapping
            stack.extend(mapping.values())
        elif isinstance(item, list):
            stack.extend(cast(list[Any], item))


def check_schema(schema: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming where ``schema`` is not a valid JSON Schema, or holds a
    pattern RE2 cannot compile."""
    try:
        Draft202012Validator.check_schema(schema, format_checker=_FORMATS)  # pyright: ignore[reportUnknownMemberType]
    except SchemaError as exc:
        path = "/".join(str(p) for p in exc.path) or "(root)"
        if exc.validator == "format" and exc.validator_value == "regex":
            cause = exc.cause
            why = (
                str(cause)
                if cause is not None
                else f"pattern {exc.instance!r} is not a valid regular expression"
            )
            raise ValueError(f"not a valid JSON Schema at {path}: {why}") from None
        raise ValueError(f"not a valid JSON Schema at {path}: {exc.message}") from None
    nodes = list(_walk(schema))
    if any("patternProperties" in n for n in nodes) and any("unevaluatedProperties" in n for n in nodes):
        raise ValueError(
            "not a supported JSON Schema: unevaluatedProperties beside patternProperties is not supported "
            "(its patterns would not be matched in linear time); use additionalProperties"
        )


def schema_validator(schema: Mapping[str, Any]) -> Draft202012Validator:
    """A validator for ``schema`` whose patterns are matched by RE2. Raises ``ValueError`` when
    the schema is invalid or holds a pattern RE2 cannot compile (check it before trusting it)."""
    check_schema(schema)
    return _LinearValidator(schema)
