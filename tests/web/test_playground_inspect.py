"""End-to-end: the playground's "why" views in headless Chromium, each checked against the API it draws.

Every view is driven as a person would (typing, clicking, the keyboard), and what it shows is compared with
the same request sent straight to the service. Screenshots go to test-output/web/.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _post(base: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


async def _shot(page: Any, directory: Path, name: str, selector: str) -> Path:
    path = directory / f"{name}.png"
    await page.locator(selector).scroll_into_view_if_needed()
    await page.locator(selector).screenshot(path=str(path))
    assert path.stat().st_size > 1000
    return path


async def _idle(page: Any, selector: str) -> None:
    """Wait until the view's container has an answer and none is on its way."""
    await page.wait_for_function(
        "(s) => { const el = document.querySelector(s); return el && el.getAttribute('aria-busy') === 'false'; }", arg=selector
    )


# --- BPE merges ----------------------------------------------------------------------------------


async def _bpe_steps_for(page: Any, live_server: str, text: str) -> dict[str, Any]:
    expected = _post(live_server, "/tokenize", {"text": text, "explain": True})
    merges = sum(len(p["merges"]) for p in expected["explain"]["pieces"])
    await page.fill("#bpe-text", text)
    await page.wait_for_function(
        "(t) => { const el = document.getElementById('bpe-pieces'); return el.dataset.text === t && el.getAttribute('aria-busy') === 'false'; }",
        arg=text,
    )
    assert await page.locator("#bpe-info strong").inner_text() == str(merges)
    pieces = page.locator("#bpe-pieces .bpe-piece")
    assert await pieces.count() == len(expected["explain"]["pieces"])
    for i, piece in enumerate(expected["explain"]["pieces"]):
        shown = pieces.nth(i)
        # one row per merge, in order, each with its rank and the symbols after it
        steps = shown.locator(".bpe-step.merge")
        assert await steps.count() == len(piece["merges"])
        assert await steps.evaluate_all("els => els.map(e => Number(e.dataset.rank))") == [m["rank"] for m in piece["merges"]]
        for j, merge in enumerate(piece["merges"]):
            symbols = await steps.nth(j).locator(".bpe-symbol").all_inner_texts()
            assert symbols == merge["symbols"]
            assert merge["merged"] in await steps.nth(j).locator(".bpe-symbol.merged").all_inner_texts()
        if not piece["special"]:
            assert await shown.locator(".bpe-step").first.locator(".bpe-symbol").all_inner_texts() == piece["initial"]
        assert await shown.locator(".bpe-result .bpe-symbol").evaluate_all("els => els.map(e => Number(e.dataset.id))") == piece["ids"]
    return expected


async def test_bpe_view_shows_each_merge_of_a_word(page: Any, live_server: str, screenshot_dir: Path) -> None:
    expected = await _bpe_steps_for(page, live_server, " unbelievable")
    assert sum(len(p["merges"]) for p in expected["explain"]["pieces"]) > 5  # a word of many merges
    await _shot(page, screenshot_dir, "bpe-merges", "#bpe")
    # several pieces, a byte-level character outside ASCII, and a special token taken whole
    await _bpe_steps_for(page, live_server, "Héllo, wörld<|im_end|>")
    assert await page.locator("#bpe-pieces .bpe-piece").count() >= 4


async def test_bpe_view_on_a_phone(phone_page: Any, live_server: str, screenshot_dir: Path) -> None:
    await _bpe_steps_for(phone_page, live_server, " tokenization")
    overflow = await phone_page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    await _shot(phone_page, screenshot_dir, "bpe-merges-phone", "#bpe")
