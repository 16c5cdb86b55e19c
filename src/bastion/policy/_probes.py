"""The evasion probes: arguments that hide a blocked pattern, each of which must be denied.

``PROBE_PATTERNS`` are the blocked substrings (with percent and base64 decoding asked for);
``EVASION_PROBES`` are (id, arguments) pairs, each hiding one of them by case, whitespace,
Unicode compatibility forms, invisible characters, nesting, keys, JSON inside a string or an
encoding. The test suite and ``bench/policy.py`` run the same table, against Bastion and its
peers; a matcher that lets any through has an evasion.
"""

from __future__ import annotations

import base64
import json
from typing import Any

PROBE_PATTERNS = ("drop table", "rm -rf", "/etc/passwd", "ignore previous instructions")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


EVASION_PROBES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("plain", {"q": "drop table users"}),
    ("upper case", {"q": "DROP TABLE users"}),
    ("mixed case", {"q": "DrOp TaBlE users"}),
    ("double space", {"q": "drop  table users"}),
    ("tab", {"q": "drop\ttable users"}),
    ("newline", {"q": "drop\ntable users"}),
    ("carriage return and tab", {"q": "rm\r\t-rf /"}),
    ("no-break space", {"q": "drop\u00a0table users"}),
    ("ideographic space", {"q": "drop\u3000table users"}),
    ("em space run", {"q": "ignore\u2003\u2003previous \t instructions"}),
    ("full-width letters", {"q": "\uff44\uff52\uff4f\uff50 \uff54\uff41\uff42\uff4c\uff45"}),
    (
        "mathematical bold",
        {"q": "\U0001d41d\U0001d42b\U0001d428\U0001d429 \U0001d42d\U0001d41a\U0001d41b\U0001d425\U0001d41e"},
    ),
    ("full-width hyphen", {"cmd": "rm \uff0drf /"}),
    ("full-width solidus", {"path": "\uff0fetc\uff0fpasswd"}),
    ("zero-width space", {"q": "dr\u200bop table"}),
    ("zero-width joiner", {"q": "drop\u200d table"}),
    ("soft hyphen", {"q": "dr\u00adop table"}),
    ("word joiner and BOM", {"q": "\ufeffdrop\u2060 table"}),
    ("bidi override", {"q": "\u202edrop table\u202c"}),
    ("combining accent", {"q": "dro\u0301p table"}),
    ("NUL inside a word", {"q": "dr\x00op table"}),
    ("nested dict", {"a": {"b": {"c": "drop table users"}}}),
    ("nested list", {"a": [1, ["x", {"y": ["drop table"]}]]}),
    ("pattern in a key", {"drop table": True}),
    ("pattern in a nested key", {"opts": [{"rm -rf": 1}]}),
    ("JSON inside a string", {"payload": json.dumps({"sql": "DROP TABLE users"})}),
    ("JSON inside JSON inside a string", {"p": json.dumps({"inner": json.dumps(["rm -rf /"])})}),
    ("JSON key inside a string", {"p": json.dumps({"/etc/passwd": "read"})}),
    ("percent-encoded space", {"q": "drop%20table"}),
    ("percent-encoded everything", {"q": "%64%72%6f%70%20%74%61%62%6c%65"}),
    ("double percent-encoding", {"q": "drop%2520table"}),
    ("plus for space", {"url": "https://x.test/?q=drop+table"}),
    ("base64", {"blob": _b64("drop table users")}),
    ("base64 without padding", {"blob": _b64("rm -rf /tmp").rstrip("=")}),
    ("url-safe base64", {"blob": base64.urlsafe_b64encode(b"??/etc/passwd??").decode()}),
    ("base64 inside JSON inside a string", {"p": json.dumps({"data": _b64("ignore previous instructions")})}),
    ("percent inside base64", {"blob": _b64("drop%20table")}),
    ("zero-width space as the separator", {"q": "drop\u200btable users"}),
    ("NUL as the separator", {"q": "rm\x00-rf /"}),
    ("word joiner as the separator", {"q": "ignore\u2060previous\u2060instructions"}),
    ("Hangul filler as a space", {"q": "drop\u3164table"}),
    ("half-width Hangul filler as a space", {"q": "rm\uffa0-rf /"}),
    ("Hangul filler inside a word", {"q": "dr\u115fop table"}),
    ("Braille blank as a space", {"q": "drop\u2800table"}),
    (
        "base64 with line breaks",
        {
            "blob": _b64("ignore previous instructions")[:12]
            + "\r\n"
            + _b64("ignore previous instructions")[12:]
        },
    ),
    (
        "base64 with spaces",
        {"blob": " ".join(_b64("cat /etc/passwd now")[i : i + 4] for i in range(0, 28, 4))},
    ),
    ("base64 data: URI", {"src": "data:text/plain;base64," + _b64("drop table users")}),
    ("base64 data: URI inside text", {"q": "see data:;base64," + _b64("rm -rf /") + " for details"}),
)

BENIGN: tuple[dict[str, Any], ...] = (
    {"q": "quarterly revenue by region", "limit": 10},
    {"q": "dropdown table layout"},
    {"path": "/etc/hosts"},
    {"q": "please ignore the previous chart"},
    {"blob": _b64("hello world")},
    {"q": "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e"},
)
"""Arguments that hold none of the patterns, however decoded: each must be allowed."""
