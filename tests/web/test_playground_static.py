"""The playground is served from the package, with nothing fetched from the internet (no browser needed)."""

from __future__ import annotations

import re

import httpx

from service.web.router import STATIC_DIR


async def test_index_is_served_with_a_strict_content_security_policy(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    for asset in ("/static/app.js", "/static/style.css", "/static/favicon.svg"):
        assert asset in r.text


async def test_static_files_are_served_with_their_types(client: httpx.AsyncClient) -> None:
    js = await client.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    css = await client.get("/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert (await client.get("/static/favicon.svg")).headers["content-type"].startswith("image/svg+xml")


async def test_unknown_and_escaping_static_paths_are_json_404s(client: httpx.AsyncClient) -> None:
    for path in ("/static/nope.js", "/static/..%2Fapp.py", "/static/%2e%2e%2f__init__.py", "/static/../router.py"):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["type"] == "not_found"


def test_the_page_loads_nothing_from_the_internet() -> None:
    """No CDN, no web font, no remote script: every URL in the page's files is same-origin."""
    files = sorted(p for p in STATIC_DIR.iterdir() if p.suffix in {".html", ".js", ".css", ".svg"})
    assert {p.name for p in files} >= {"index.html", "app.js", "style.css"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        remote = [
            u for u in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text) if "www.w3.org/2000/svg" not in u
        ]
        assert not remote, f"{path.name} refers to {remote}"
        assert "@import" not in text or path.suffix != ".css"


async def test_the_playground_is_not_in_the_openapi_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths and "/static/{name}" not in paths
