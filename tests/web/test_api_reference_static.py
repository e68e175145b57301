"""`/docs` and `/redoc` are served from the package, public, with nothing fetched from the internet (no browser needed)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import httpx
import pytest
from fastapi import FastAPI

from service.config import Settings

PAGES = ["/docs", "/redoc"]
_URL = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']|url:\s*'([^']+)'|window\.location\.origin \+ '([^']+)'""")


def _referenced(html: str) -> list[str]:
    return [next(g for g in m.groups() if g) for m in _URL.finditer(html)]


@pytest.mark.parametrize("path", PAGES)
async def test_the_page_refers_only_to_this_service(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "https:" not in csp
    assert not re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", r.text), "the page names another host"
    urls = _referenced(r.text)
    assert "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        if url != "/docs/oauth2-redirect" or path == "/docs":
            assert (await client.get(url)).status_code == 200, url


async def test_assets_are_served_with_their_types(client: httpx.AsyncClient) -> None:
    js = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "SwaggerUIBundle" in js.text[:2000]
    css = await client.get("/docs/assets/swagger-ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    redoc = await client.get("/docs/assets/redoc.standalone.js")
    assert redoc.status_code == 200 and redoc.headers["content-type"].startswith("text/javascript")
    assert js.headers["x-content-type-options"] == "nosniff" and "etag" in js.headers


async def test_the_licences_of_the_served_releases_are_served_beside_them(client: httpx.AsyncClient) -> None:
    """The bundles point to `<bundle>.LICENSE.txt` beside them; the wheel omits those, the package ships them.
    The served releases must be the ones whose licences are shipped (see service/web/docs.py)."""
    swagger = (await client.get("/docs/assets/swagger-ui-bundle.js")).text
    redoc = (await client.get("/docs/assets/redoc.standalone.js")).text
    assert swagger.startswith("/*! For license information please see swagger-ui-bundle.js.LICENSE.txt */")
    assert redoc.startswith("/*! For license information please see redoc.standalone.js.LICENSE.txt */")
    assert 'PACKAGE_VERSION:"5.32.6"' in swagger and 'const Yw="2.5.3"' in redoc
    expected = {
        "swagger-ui-bundle.js.LICENSE.txt": "@license",
        "redoc.standalone.js.LICENSE.txt": "@license",
        "swagger-ui.LICENSE": "Apache License",
        "swagger-ui.NOTICE": "SmartBear",
        "redoc.LICENSE": "MIT License",
    }
    from service.web.docs import LICENSES_DIR

    assert set(expected) <= {p.name for p in LICENSES_DIR.iterdir()}
    for name, text in expected.items():
        r = await client.get(f"/docs/assets/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), name
        assert text in r.text, name


async def test_unknown_and_escaping_asset_paths_are_json_404s(client: httpx.AsyncClient) -> None:
    for path in (
        "/docs/assets/nope.js",
        "/docs/assets/..%2Fdocs.py",
        "/docs/assets/%2e%2e%2f__init__.py",
        "/docs/assets/../router.py",
        "/docs/assets/core.py",
    ):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["type"] == "not_found"
    from service.web.docs import ASSETS

    assert set(ASSETS) >= {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"}


async def test_the_oauth2_redirect_page(client: httpx.AsyncClient, app: FastAPI) -> None:
    assert app.swagger_ui_oauth2_redirect_url == "/docs/oauth2-redirect"
    r = await client.get("/docs/oauth2-redirect")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "swaggerUIRedirectOauth2" in r.text


async def test_the_reference_is_public_when_api_keys_are_set(
    settings: Settings, make_app: Callable[[Settings], Awaitable[FastAPI]]
) -> None:
    locked = await make_app(settings.model_copy(update={"api_keys": ["docs-test-key"]}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=locked), base_url="http://locked") as http:
        assert (await http.get("/v1/models")).status_code == 401  # the model routes are locked...
        for path in [
            *PAGES,
            "/docs/oauth2-redirect",
            "/openapi.json",
            "/docs/assets/swagger-ui-bundle.js",
            "/docs/assets/redoc.standalone.js",
        ]:
            assert (await http.get(path)).status_code == 200, path  # ...the reference is not


async def test_the_reference_routes_are_not_in_the_openapi_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]
