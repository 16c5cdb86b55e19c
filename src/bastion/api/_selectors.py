"""Label selectors, as Kubernetes writes them: ``app=web,tier!=db,env in (a,b),!legacy,owner``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from bastion.errors import UserError

from ._meta import check_label_key, check_label_value

Operator = Literal["=", "!=", "in", "notin", "exists", "!exists"]

_TERM = re.compile(
    r"""\s*(?:
        (?P<neg>!)\s*(?P<nkey>[^\s,=!()]+)
      | (?P<skey>[^\s,=!()]+)\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\)
      | (?P<ekey>[^\s,=!()]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s,=!()]*)
      | (?P<key>[^\s,=!()]+)
    )\s*(?:,|$)""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        match self.op:
            case "exists":
                return present
            case "!exists":
                return not present
            case "=" | "in":
                return present and labels[self.key] in self.values
            case "!=" | "notin":
                return not present or labels[self.key] not in self.values


def parse_selector(text: str) -> list[Requirement]:
    """Parse a selector; an empty text selects everything.

    Raises:
        UserError: naming the part that does not parse and how a selector is written.
    """
    requirements: list[Requirement] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TERM.match(text, pos)
        if match is None or match.end() == pos:
            raise UserError(
                f"label selector {text!r} does not parse at {text[pos:]!r}",
                field="labelSelector",
                hint="write terms like 'app=web', 'tier!=db', 'env in (dev,prod)', 'owner' or '!legacy', "
                "separated by commas",
            )
        pos = match.end()
        try:
            requirements.append(_requirement(match))
        except ValueError as exc:
            raise UserError(str(exc), field="labelSelector", hint="fix the label key or value") from None
    return requirements


def _requirement(match: re.Match[str]) -> Requirement:
    if match["nkey"]:
        return Requirement(check_label_key(match["nkey"]), "!exists")
    if match["skey"]:
        values = tuple(check_label_value(v.strip()) for v in match["values"].split(",") if v.strip())
        return Requirement(
            check_label_key(match["skey"]), "in" if match["setop"] == "in" else "notin", values
        )
    if match["ekey"]:
        op: Operator = "!=" if match["op"] == "!=" else "="
        return Requirement(check_label_key(match["ekey"]), op, (check_label_value(match["value"]),))
    return Requirement(check_label_key(match["key"]), "exists")
