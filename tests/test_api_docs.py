"""The API docs page works without network: it names only this server's URLs, and the server
serves each of them, without an API key, with the right content type."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx

from .conftest import Server

TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


def _references(html: str) -> list[str]:
    """Every URL the page makes the browser load: src/href attributes and the spec's `url:`."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    found += re.findall(r"""\burl\s*:\s*["']([^"']+)["']""", html)
    return found


def test_the_docs_page_loads_only_local_assets(server: Server) -> None:
    page = httpx.get(f"{server.url}/api/v1/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "SwaggerUIBundle" in html
    references = _references(html)
    assert len(references) == 4, references  # stylesheet, icon, script, OpenAPI document
    for ref in references:
        assert ref.startswith("/") and not ref.startswith("//"), f"{ref} is not on this server"
    assert "http://" not in html and "https://" not in html, "no absolute URL at all (CDN, validator)"
    assert re.search(r'"validatorUrl":\s*null', html), "Swagger UI's public validator badge is off"
    for ref in references:
        asset = httpx.get(urljoin(server.url, ref))  # no Authorization header
        assert asset.status_code == 200, ref
        suffix = ref[ref.rfind(".") :]
        assert TYPES[suffix] in asset.headers["content-type"], (ref, asset.headers["content-type"])
        assert len(asset.content) > 100, ref
    script = httpx.get(urljoin(server.url, next(r for r in references if r.endswith(".js"))))
    assert "SwaggerUIBundle" in script.text


def test_the_assets_directory_serves_nothing_else(server: Server) -> None:
    for path in (
        "/api/v1/docs/assets/../../../etc/passwd",
        "/api/v1/docs/assets/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/api/v1/docs/assets/..%2f__init__.py",
        "/api/v1/docs/assets/",
        "/api/v1/docs/assets/no-such-file.js",
    ):
        response = httpx.get(f"{server.url}{path}")
        assert response.status_code == 404, (path, response.status_code)
        assert "root:" not in response.text
