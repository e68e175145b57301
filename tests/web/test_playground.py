"""End-to-end: the playground page in headless Chromium against the real service on localhost.

Each test leaves a screenshot in test-output/web/ for people to look at.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _post(base: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def _get(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=30) as response:
        return json.load(response)


async def _shot(page: Any, directory: Path, name: str, selector: str | None = None) -> Path:
    path = directory / f"{name}.png"
    if selector:
        await page.locator(selector).screenshot(path=str(path))
    else:
        await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path


# --- tokenizer ---------------------------------------------------------------------------------


async def test_tokenizer_shows_one_chip_per_token(page: Any, live_server: str, screenshot_dir: Path) -> None:
    sentence = "The quick brown fox jumps over the lazy dog, doesn't it? Tokenization: 12345 ünïcödé!"
    expected = _post(live_server, "/tokenize", {"text": sentence})
    await page.fill("#tok-text", sentence)
    await page.wait_for_function(
        "(n) => document.querySelectorAll('#tok-chips .chip').length === n && document.getElementById('tok-count').textContent === String(n)",
        arg=expected["count"],
    )
    chips = page.locator("#tok-chips .chip")
    assert await chips.count() == expected["count"] > 10
    assert await page.locator("#tok-count").inner_text() == str(expected["count"])
    # the id is on hover (title), and the chips spell the sentence back
    assert (await chips.nth(1).get_attribute("title")).startswith(f"id {expected['ids'][1]} ")
    assert [await chips.nth(i).get_attribute("data-id") for i in range(await chips.count())] == [str(i) for i in expected["ids"]]
    await page.check("#tok-show-ids")
    assert await page.locator("#tok-chips .chip-id").first.is_visible()
    await _shot(page, screenshot_dir, "tokenizer", "#tokenizer")


# --- next token, one step at a time -------------------------------------------------------------


async def test_next_token_candidates_grow_the_prompt(page: Any, live_server: str, screenshot_dir: Path) -> None:
    prompt = "The capital of France is"
    await page.fill("#nt-prompt", prompt)
    await page.fill("#nt-topk", "8")
    await page.click("#nt-refresh")
    await page.wait_for_function("() => document.querySelectorAll('#nt-candidates .candidate').length === 8")
    expected = _post(live_server, "/next-token-probs", {"prompt": prompt, "top_k": 8})
    first = page.locator("#nt-candidates .candidate").first
    token = await first.get_attribute("data-token")
    assert token == expected["candidates"][0]["token"]
    assert (await first.locator(".bar-value").inner_text()).endswith("%")
    info_before = await page.locator("#nt-info").inner_text()

    await first.click()
    assert await page.input_value("#nt-prompt") == prompt + token
    await page.wait_for_function("(before) => document.getElementById('nt-info').innerText !== before", arg=info_before)
    await page.wait_for_function("() => document.querySelectorAll('#nt-candidates .candidate').length === 8")

    # keyboard: focus a candidate and press Enter to append it; Undo takes it back
    second = page.locator("#nt-candidates .candidate").nth(1)
    token2 = await second.get_attribute("data-token")
    await second.focus()
    await page.keyboard.press("Enter")
    assert await page.input_value("#nt-prompt") == prompt + token + token2
    await page.wait_for_function("() => document.querySelectorAll('#nt-candidates .candidate').length === 8")
    await _shot(page, screenshot_dir, "next-token", "#next-token")
    await page.click("#nt-undo")
    assert await page.input_value("#nt-prompt") == prompt + token


async def test_service_errors_are_shown_as_readable_messages(page_and_problems: Any) -> None:
    page, problems = page_and_problems
    problems.expect_http_errors = True
    await page.fill("#nt-prompt", "Hello")
    await page.fill("#nt-topk", "100000")
    await page.click("#nt-refresh")
    error = page.locator("#nt-error")
    await error.wait_for(state="visible")
    assert "top_k" in await error.inner_text()
    await page.fill("#nt-topk", "5")
    await page.click("#nt-refresh")
    await error.wait_for(state="hidden")
    # client-side checks read the same way
    await page.fill("#gen-max", "")
    await page.click("#gen-start")
    assert "Max tokens" in await page.locator("#gen-error").inner_text()


# --- generation ----------------------------------------------------------------------------------


async def test_generation_streams_and_stops(page: Any, live_server: str, screenshot_dir: Path) -> None:
    await page.fill("#gen-prompt", "Here is a long story about a dragon who learned to cook. Chapter one.")
    await page.fill("#gen-temp", "0.8")
    await page.fill("#gen-topp", "0.95")
    await page.fill("#gen-max", "400")
    await page.fill("#gen-seed", "7")
    await page.click("#gen-start")
    await page.wait_for_function("() => document.getElementById('gen-status').dataset.state === 'running'")
    assert await page.is_enabled("#gen-stop") and await page.is_disabled("#gen-start")
    await page.wait_for_function("() => document.querySelectorAll('#gen-output .gen-token').length >= 6")
    await page.click("#gen-stop")
    await page.wait_for_function("() => document.getElementById('gen-status').dataset.state === 'stopped'")
    assert (await page.locator("#gen-status").inner_text()).startswith("Stopped after")
    stopped_at = await page.locator("#gen-output .gen-token").count()
    assert 6 <= stopped_at < 400
    assert await page.is_enabled("#gen-start") and await page.is_disabled("#gen-stop")

    # tokens are tinted by probability and carry their alternatives
    token = page.locator("#gen-output .gen-token").nth(2)
    assert "alternatives:" in await token.get_attribute("title")
    assert await token.evaluate("el => getComputedStyle(el).backgroundColor") not in ("", "rgba(0, 0, 0, 0)")
    await token.click()
    assert await page.locator("#gen-inspector").is_visible()
    assert await page.locator("#gen-inspector .bar-row").count() == 5
    await _shot(page, screenshot_dir, "generation-stopped", "#generate")

    # nothing more arrives, and the server let go of the generation
    await asyncio.sleep(1.0)
    assert await page.locator("#gen-output .gen-token").count() == stopped_at
    deadline = time.monotonic() + 10
    while _get(live_server, "/info")["engine"]["running"] != 0:
        assert time.monotonic() < deadline, "the server kept generating after the browser stopped"
        await asyncio.sleep(0.2)


async def test_generation_runs_to_the_end(page: Any, screenshot_dir: Path) -> None:
    await page.fill("#gen-prompt", "The capital of France is")
    await page.fill("#gen-temp", "0")
    await page.fill("#gen-max", "6")
    await page.press("#gen-prompt", "Control+Enter")
    await page.wait_for_function("() => ['done', 'error'].includes(document.getElementById('gen-status').dataset.state)")
    status = await page.locator("#gen-status").inner_text()
    assert status.startswith("Done ("), status
    tokens = await page.locator("#gen-output .gen-token").count()
    assert 1 <= tokens <= 6
    assert await page.locator("#gen-output .prompt").inner_text() == "The capital of France is"
    assert "Paris" in await page.locator("#gen-output").inner_text()


# --- the whole page ------------------------------------------------------------------------------


async def test_whole_page_on_desktop(page: Any, screenshot_dir: Path) -> None:
    await page.wait_for_function("() => document.querySelectorAll('#tok-chips .chip').length > 0")
    await page.wait_for_function("() => document.querySelectorAll('#nt-candidates .candidate').length > 0")
    assert (await page.locator("h1").inner_text()).startswith("genai-service")
    # every control has a label
    unlabelled = await page.evaluate(
        """() => [...document.querySelectorAll('input, textarea, select')]
              .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
              .map(el => el.id)"""
    )
    assert unlabelled == []
    await _shot(page, screenshot_dir, "playground-desktop")


async def test_page_fits_a_phone_screen(phone_page: Any, screenshot_dir: Path) -> None:
    page = phone_page
    await page.wait_for_function("() => document.querySelectorAll('#tok-chips .chip').length > 0")
    await page.wait_for_function("() => document.querySelectorAll('#nt-candidates .candidate').length > 0")
    overflow = await page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    box = await page.locator("#digit-canvas").bounding_box()
    assert box is not None and box["width"] <= 390
    await _shot(page, screenshot_dir, "playground-phone")
