"""`/docs` (Swagger UI) and `/redoc` (ReDoc) in headless Chromium with no network but the service itself.

Every request the page makes is routed through a handler that lets through only the test server's own
origin and records (and aborts) anything else: offline, a page that needs a CDN is blank, so these tests
fail wherever the pages would. Each test leaves a screenshot in test-output/web/.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.slow

OPERATIONS = [("POST", "/generate"), ("POST", "/classify-digit"), ("POST", "/v1/chat/completions"), ("GET", "/health")]
# ReDoc's side menu always shows Redocly's logo from its CDN (an <img> it hides when the load fails). The
# pages' Content-Security-Policy refuses it before any request is made, and Chromium logs that refusal.
REDOC_LOGO_REFUSED = "Loading the image 'https://cdn.redoc.ly/redoc/logo-mini.svg' violates the following Content Security Policy directive"


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


@dataclasses.dataclass
class Offline:
    """What a page asked for: its own origin's URLs (served), everything else (refused), and its errors."""

    page: Any
    allowed_console_errors: tuple[str, ...] = ()
    served: list[str] = dataclasses.field(default_factory=list)
    refused: list[str] = dataclasses.field(default_factory=list)
    console_errors: list[str] = dataclasses.field(default_factory=list)
    page_errors: list[str] = dataclasses.field(default_factory=list)

    def assert_clean(self) -> None:
        assert not self.refused, f"the page tried to reach outside the service: {self.refused}"
        assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"
        errors = [m for m in self.console_errors if not m.startswith(self.allowed_console_errors)]
        assert not errors, f"console errors in the page (a CSP refusal shows here too): {errors}"


@pytest.fixture
async def offline_page(browser: Any, live_server: str) -> AsyncIterator[Callable[[str], Awaitable[Offline]]]:
    """`await offline_page(path)`: a fresh page on live_server + path, with every other origin blocked."""
    contexts: list[Any] = []
    opened: list[Offline] = []
    own = _origin(live_server)

    async def _open(path: str, *, allowed_console_errors: tuple[str, ...] = ()) -> Offline:
        context = await browser.new_context(viewport={"width": 1280, "height": 1000}, service_workers="block")
        context.set_default_timeout(30_000)
        contexts.append(context)
        page = await context.new_page()
        seen = Offline(page, allowed_console_errors)

        async def guard(route: Any) -> None:
            url = route.request.url
            if _origin(url) == own:
                seen.served.append(url)
                await route.continue_()
            elif url.startswith(("data:", "blob:")):  # in-page content, not network
                await route.continue_()
            else:
                seen.refused.append(url)
                await route.abort("internetdisconnected")

        await context.route("**/*", guard)
        page.on("console", lambda msg: seen.console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: seen.page_errors.append(str(exc)))
        response = await page.goto(live_server + path)
        assert response is not None and response.status == 200
        opened.append(seen)
        return seen

    yield _open
    for context in contexts:
        await context.close()
    for seen in opened:
        seen.assert_clean()


async def test_swagger_ui_lists_the_operations_offline(
    offline_page: Any, live_server: str, screenshot_dir: Path
) -> None:
    docs = await offline_page("/docs")
    page = docs.page
    await page.locator(".opblock-summary").first.wait_for()
    for method, path in OPERATIONS:
        operation = page.locator(f".opblock-{method.lower()} .opblock-summary-path[data-path='{path}']")
        await operation.wait_for()
        assert await operation.is_visible(), f"{method} {path} is not listed"
    assert await page.locator(".opblock-summary").count() >= 15  # every route, not a few
    assert "genai-service" in (await page.locator(".info .title").inner_text())
    await page.screenshot(path=str(screenshot_dir / "docs-swagger-ui.png"))
    paths = {urlsplit(url).path for url in docs.served}
    assert {"/docs", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/openapi.json"} <= paths


async def test_swagger_ui_try_it_out_calls_the_service(offline_page: Any, live_server: str) -> None:
    docs = await offline_page("/docs#/system")
    page = docs.page
    health = page.locator(".opblock-get", has=page.locator(".opblock-summary-path[data-path='/health']"))
    await health.locator(".opblock-summary").click()
    await health.locator("button.try-out__btn").click()
    await health.locator("button.execute").click()
    status = health.locator(".live-responses-table .response .response-col_status").first
    await status.wait_for()
    assert (await status.inner_text()).strip() == "200"
    assert f"{live_server}/health" in docs.served


async def test_redoc_renders_the_reference_offline(offline_page: Any, live_server: str, screenshot_dir: Path) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=30) as http:
        spec = (await http.get(live_server + "/openapi.json")).json()
    redoc = await offline_page("/redoc", allowed_console_errors=(REDOC_LOGO_REFUSED,))
    page = redoc.page
    title = page.locator("h1", has_text="genai-service")
    await title.first.wait_for()
    for method, path in OPERATIONS:
        summary = spec["paths"][path][method.lower()]["summary"]
        heading = page.locator("h2", has_text=summary)
        await heading.first.wait_for()
        assert await heading.count() >= 1, f"ReDoc shows no {method} {path} ({summary!r})"
    # the endpoint boxes show method and path
    assert await page.locator("span", has_text="/classify-digit").count() >= 1
    await page.screenshot(path=str(screenshot_dir / "docs-redoc.png"))
    paths = {urlsplit(url).path for url in redoc.served}
    assert {"/redoc", "/docs/assets/redoc.standalone.js", "/openapi.json"} <= paths
    assert await page.locator("img[alt='redocly logo']").count() == 0  # refused, so ReDoc dropped it
