"""Egress allowlists for ``http.fetch``, decided before the call (the tool checks again).

The patterns mean what they mean to the tool: ``example.com`` (that host), ``*.example.com`` (its
subdomains at any depth, not the apex), an optional ``:port`` (without one, only the scheme's
default port); hosts compare as lowercase ASCII (IDNA) without a trailing dot, IPs in canonical
form. A URL this parser finds odd (credentials, whitespace, a backslash, a non-http scheme) is
refused here rather than argued about later.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_target(url: object) -> Target | str:
    """The host a URL reaches, or why it is refused."""
    if not isinstance(url, str) or not url:
        return "argument 'url' must be a non-empty string"
    if len(url) > 8192 or any(c <= " " or c in "\x7f\\" for c in url):
        return "argument 'url' is too long or holds whitespace, a control character or a backslash"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "argument 'url' is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return f"argument 'url' must use http or https, not {scheme or 'no scheme'!r}"
    if "@" in parts.netloc:
        return "argument 'url' must not carry credentials (user:password@host)"
    host = canonical_host(_idna(parts.hostname or ""))
    if host is None or port == 0:
        return "argument 'url' has no host, or a host or port in a non-standard form"
    return Target(scheme=scheme, host=host, port=port or _DEFAULT_PORTS[scheme])


def canonical_host(host: str) -> str | None:
    host = host.strip().lower().rstrip(".")
    if not host:
        return None
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not all(c.isalnum() or c in "-." for c in host) or not host.isascii() or ".." in host:
        return None
    return host


def _idna(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return ""


def allows(patterns: Iterable[str], target: Target) -> bool:
    return any(_allows(pattern, target) for pattern in patterns)


def _allows(pattern: str, target: Target) -> bool:
    pattern = pattern.strip().lower()
    host, port = pattern, ""
    if pattern.startswith("["):
        host, _, rest = pattern[1:].partition("]")
        if rest and not rest.startswith(":"):
            return False
        port = rest[1:]
    elif pattern.count(":") == 1:
        host, _, port = pattern.partition(":")
    if port:
        if not port.isdigit() or int(port) != target.port:
            return False
    elif target.port != _DEFAULT_PORTS[target.scheme]:
        return False
    if host.startswith("*."):
        suffix = canonical_host(_idna(host[2:]))
        return suffix is not None and target.host.endswith("." + suffix)
    return "*" not in host and canonical_host(_idna(host)) == target.host
