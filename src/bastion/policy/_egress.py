"""Where a URL goes: the one parser behind egress allowlists, Secret destinations and the HTTP tools.

The host is judged exactly as the HTTP client will connect to it: httpx parses the URL (IDNA 2008
for non-ASCII names, so ``evil。example。com`` is ``evil.example.com`` and ``faß.de`` is
``xn--fa-hia.de``, never the IDNA 2003 ``fass.de``), and we take the host it will resolve. A second
parse (the standard library's) must find the same host and port once put through the same
encoding, or the URL is refused: two parsers that disagree on a URL are how a check and a
connection end up looking at two different hosts. Hosts then compare as lowercase ASCII without a
trailing dot; a host ending in a number must be a dotted-decimal IPv4 address (resolvers also read
``127.1``, ``0x7f.1`` or ``2130706433`` as 127.0.0.1), an IPv6 address compares compressed.

Patterns (a grant's ``egress``, a Policy rule's ``egressAllow``, a Secret's ``destinations``):
``example.com`` (that host), ``*.example.com`` (its subdomains at any depth, not the apex), with an
optional ``:port``; without one, only the scheme's default port (80 or 443). Any other glob matches
nothing. A Secret's destination may also be a URL prefix, ``https://api.example.com/v1/``: the
same scheme, host and port, and a path under that prefix (compared by whole path segments).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL = 8192
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """Where a request goes, as the HTTP client will connect."""

    url: str
    """The URL as given: what the client is handed."""
    scheme: str
    host: str
    """Lowercase ASCII name without trailing dot, or a canonical IP (IPv6 without brackets)."""
    port: int
    path: str = "/"
    """The URL's path as sent (percent-escapes kept), without query."""

    def __str__(self) -> str:
        """``host:port``, the port always: what a decision's ``egress`` carries."""
        return f"{self._host}:{self.port}"

    @property
    def display(self) -> str:
        """``host``, with ``:port`` only if it is not the scheme's default."""
        return self._host if self.port == DEFAULT_PORTS[self.scheme] else str(self)

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``."""
        return f"{self.scheme}://{self.display}"

    @property
    def _host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


def canonical_host(host: str) -> str | None:
    """``host`` (ASCII, as the client encodes it) in the one form we compare, or None if it is not
    a plain name or IP."""
    host = host.lower().removesuffix(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host).compressed  # a zone id ("%eth0") fails here
        except ValueError:
            return None
    labels = host.split(".")
    if labels[-1].isdigit() or labels[-1].startswith("0x"):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            return None
    return host if all(_LABEL.fullmatch(label) for label in labels) else None


def encode_host(host: str) -> str | None:
    """A host as written (a pattern, a hostname) encoded the way the HTTP client encodes it, then
    canonical; None if the client would refuse it or it is not a plain name or IP."""
    if not host or any(c in host for c in "/?#@\\ ") or any(ord(c) < 0x21 for c in host):
        return None
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    try:
        raw = httpx.URL(f"http://{bracketed}/").raw_host
    except (httpx.InvalidURL, ValueError, UnicodeError):
        return None
    return canonical_host(raw.decode("ascii", "replace"))


def parse_target(url: object) -> HttpTarget | str:
    """Where ``url`` goes, or why it is refused (a sentence naming argument 'url')."""
    if not isinstance(url, str) or not url:
        return "argument 'url' must be a non-empty string"
    if len(url) > MAX_URL:
        return f"argument 'url' is longer than {MAX_URL} characters"
    if any(c <= " " or c in "\x7f\\" for c in url):
        return "argument 'url' contains whitespace, a control character or a backslash"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "argument 'url' is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        return f"argument 'url' must use http or https, not {scheme or 'no scheme'!r}"
    if "@" in parts.netloc:
        return "argument 'url' must not carry credentials (user:password@host); the gateway injects them"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, UnicodeError):
        return "argument 'url' is not a valid URL"
    default = DEFAULT_PORTS[scheme]
    host = canonical_host(parsed.raw_host.decode("ascii", "replace"))
    seen = encode_host(parts.hostname or "")
    if host is None or host != seen or (port or default) != (parsed.port or default) or port == 0:
        return "argument 'url' has a host or port in a non-standard form"
    return HttpTarget(
        url=url,
        scheme=scheme,
        host=host,
        port=port or default,
        path=parsed.raw_path.decode("ascii", "replace").partition("?")[0] or "/",
    )


def allows(patterns: Iterable[str], target: HttpTarget) -> bool:
    """Whether any host pattern names ``target``'s host and port."""
    return any(host_allows(pattern, target) for pattern in patterns)


def host_allows(pattern: str, target: HttpTarget) -> bool:
    """Whether one host pattern (``host``, ``*.host``, either with ``:port``) names ``target``."""
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
    elif target.port != DEFAULT_PORTS[target.scheme]:
        return False
    if host.startswith("*."):
        suffix = encode_host(host[2:])
        return suffix is not None and target.host.endswith("." + suffix)
    return "*" not in host and encode_host(host) == target.host


def destination_allows(destination: str, target: HttpTarget) -> bool:
    """Whether a Secret's destination (a host pattern, or a URL prefix) names ``target``.

    A host pattern (``api.example.com``, ``*.example.com``, ``api.example.com:8443``) means
    https only: a credential does not travel in cleartext unless the operator writes the scheme,
    ``http://api.example.com:8080`` (``http://*.example.com`` too). A URL prefix needs the same
    scheme, host and port, and a path equal to the prefix's or under it (``https://a.example/v1``
    covers ``/v1`` and ``/v1/chat``, not ``/v10``), written plainly: a path that a server could
    resolve elsewhere than it reads (a percent-encoded dot, slash, backslash or percent sign, a
    ``.`` or ``..`` segment, a ``;`` path parameter as in ``/v1/..;/admin``) matches no prefix
    narrower than the whole host. Anything that does not parse matches nothing.
    """
    destination = destination.strip()
    scheme, sep, rest = destination.partition("://")
    if not sep:
        return target.scheme == "https" and host_allows(destination, target)
    host = rest.removesuffix("/")
    if "*" in host and "/" not in host:  # a scheme and a host pattern
        return scheme.lower() == target.scheme and host_allows(host, target)
    prefix = parse_target(destination)
    if isinstance(prefix, str) or "?" in destination or "#" in destination:
        return False
    if (prefix.scheme, prefix.host, prefix.port) != (target.scheme, target.host, target.port):
        return False
    base = prefix.path.rstrip("/")
    if not base:
        return True
    if not plain_path(target.path):
        return False
    return target.path == base or target.path.startswith(base + "/")


_AMBIGUOUS = re.compile(r"%(2e|2f|5c|25)|;", re.IGNORECASE)


def plain_path(path: str) -> bool:
    """Whether ``path`` means the same to every server: no percent-encoded ``.``, ``/``, ``\\``
    or ``%``, no ``;`` parameter, no ``.`` or ``..`` segment (servers resolve them, in any mix)."""
    if _AMBIGUOUS.search(path):
        return False
    return not any(segment in (".", "..") for segment in path.split("/"))
