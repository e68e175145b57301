"""Browser fixtures: the real service on a free localhost port, and Debian's chromium driven by Playwright.

The service runs in a thread (tests/servers.py `serve`) on the models the session already loaded. Chromium is the
system one (`/usr/bin/chromium`, `apt-get install chromium`); Playwright's own browser download is never
used. Without chromium the tests skip on a developer machine and fail in CI (`CI` set), where `.ci/run`
installs it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import serve

from service.config import Settings
from service.state import LoadedModels

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root in a container
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--disable-quic",
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    """Skip on a developer machine; in CI a missing browser is a failure, never a skip."""
    if _in_ci():
        pytest.fail(f"{reason} (CI must run the browser tests: .ci/run installs chromium)", pytrace=False)
    pytest.skip(reason)


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM_PATH")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


# --- the service -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def live_server(settings: Settings, loaded_models: LoadedModels) -> Iterator[str]:
    """The service with the default settings, for the whole session."""
    with serve(settings, loaded_models) as url:
        yield url


API_KEY = "playground-test-key"


@pytest.fixture
def locked_server(settings: Settings, loaded_models: LoadedModels) -> Iterator[tuple[str, str]]:
    """(base URL, key) of the service with GENAI_API_KEYS set: model routes answer 401 without the key."""
    with serve(settings.model_copy(update={"api_keys": [API_KEY]}), loaded_models) as url:
        yield url, API_KEY


# --- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        _unavailable("chromium is not installed (apt-get install chromium)")
    return path  # type: ignore[return-value]


@pytest.fixture(scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    """Playwright's async API, so that it shares the test session's event loop with the other async tests."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@dataclasses.dataclass
class PageProblems:
    """What went wrong in the page: console errors, uncaught exceptions, requests that left localhost."""

    console_errors: list[str] = dataclasses.field(default_factory=list)
    page_errors: list[str] = dataclasses.field(default_factory=list)
    external_requests: list[str] = dataclasses.field(default_factory=list)
    expect_http_errors: bool = False  # a test that provokes 4xx answers sets this (the browser logs each one)

    def assert_clean(self) -> None:
        assert not self.external_requests, f"the page reached outside the service: {self.external_requests}"
        assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"
        console = self.console_errors
        if self.expect_http_errors:
            console = [m for m in console if "the server responded with a status of 4" not in m]
        assert not console, f"console errors in the page: {console}"


async def _open_page(
    browser: Any, live_server: str, viewport: dict[str, int], *, wait_ready: bool = True, **context_args: Any
) -> tuple[Any, Any, PageProblems]:
    # reduced motion: the page then skips its bar animations, so screenshots show final values
    context = await browser.new_context(viewport=viewport, reduced_motion="reduce", **context_args)
    context.set_default_timeout(30_000)
    problems = PageProblems()

    async def guard(route: Any) -> None:
        url = route.request.url
        if url.startswith((live_server, "data:", "blob:")):
            await route.continue_()
        else:
            problems.external_requests.append(url)
            await route.abort()

    await context.route("**/*", guard)
    page = await context.new_page()
    page.on("console", lambda msg: problems.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.page_errors.append(str(exc)))
    await page.goto(live_server + "/")
    if wait_ready:
        await page.wait_for_function("() => document.getElementById('service-status').dataset.state === 'ready'")
    return context, page, problems


@pytest.fixture
async def page_and_problems(browser: Any, live_server: str) -> AsyncIterator[tuple[Any, PageProblems]]:
    """A fresh desktop-sized page on the playground, checked for errors and external requests afterwards."""
    context, page, problems = await _open_page(browser, live_server, {"width": 1280, "height": 1000})
    try:
        yield page, problems
    finally:
        await context.close()
    problems.assert_clean()


@pytest.fixture
def page(page_and_problems: tuple[Any, PageProblems]) -> Any:
    return page_and_problems[0]


@pytest.fixture
async def phone_page(browser: Any, live_server: str) -> AsyncIterator[Any]:
    """The playground on a phone-sized touch screen, in dark mode."""
    context, page, problems = await _open_page(
        browser,
        live_server,
        {"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        color_scheme="dark",
    )
    try:
        yield page
    finally:
        await context.close()
    problems.assert_clean()


@pytest.fixture
async def open_page(browser: Any) -> AsyncIterator[Any]:
    """`await open_page(base_url)` -> (page, problems) on any server; closed and checked afterwards."""
    opened: list[tuple[Any, PageProblems]] = []

    async def _open(base_url: str, *, wait_ready: bool = True) -> tuple[Any, PageProblems]:
        context, page, problems = await _open_page(
            browser, base_url, {"width": 1280, "height": 1000}, wait_ready=wait_ready
        )
        opened.append((context, problems))
        return page, problems

    yield _open
    for context, _ in opened:
        await context.close()
    for _, problems in opened:
        problems.assert_clean()


@pytest.fixture(scope="session")
def screenshot_dir(output_dir: Path) -> Path:
    path = output_dir / "web"
    path.mkdir(parents=True, exist_ok=True)
    return path
