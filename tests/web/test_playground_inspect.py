"""End-to-end: the playground's "why" views in headless Chromium, each checked against the API it draws.

Every view is driven as a person would (typing, clicking, the keyboard), and what it shows is compared with
the same request sent straight to the service. Screenshots go to test-output/web/.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sse import parse_sse

pytestmark = pytest.mark.slow


def _post(base: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def _get(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=60) as response:
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
        "(s) => { const el = document.querySelector(s); return el && el.getAttribute('aria-busy') === 'false'; }",
        arg=selector,
    )


# --- BPE merges ----------------------------------------------------------------------------------


async def _bpe_steps_for(page: Any, live_server: str, text: str) -> dict[str, Any]:
    expected: dict[str, Any] = _post(live_server, "/tokenize", {"text": text, "explain": True})
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
        assert await steps.evaluate_all("els => els.map(e => Number(e.dataset.rank))") == [
            m["rank"] for m in piece["merges"]
        ]
        for j, merge in enumerate(piece["merges"]):
            symbols = await steps.nth(j).locator(".bpe-symbol").all_inner_texts()
            assert symbols == merge["symbols"]
            assert merge["merged"] in await steps.nth(j).locator(".bpe-symbol.merged").all_inner_texts()
        if not piece["special"]:
            assert await shown.locator(".bpe-step").first.locator(".bpe-symbol").all_inner_texts() == piece["initial"]
        assert (
            await shown.locator(".bpe-result .bpe-symbol").evaluate_all("els => els.map(e => Number(e.dataset.id))")
            == piece["ids"]
        )
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


# --- sampler stages -----------------------------------------------------------------------------


async def _sampler_shows(
    page: Any, live_server: str, *, temperature: float, top_k: int, top_p: float, penalty: float
) -> list[dict[str, Any]]:
    """Wait until the chart shows these settings; return the API's stages for them."""
    await page.wait_for_function(
        """([t, k, p, r]) => { const el = document.getElementById('smp-chart');
            return el.dataset.temperature === t && el.dataset.sampleTopK === k && el.dataset.topP === p
                && el.dataset.repetitionPenalty === r && el.getAttribute('aria-busy') === 'false'; }""",
        arg=[
            str(temperature) if temperature != int(temperature) else str(int(temperature)),
            str(top_k),
            str(top_p) if top_p != int(top_p) else str(int(top_p)),
            str(penalty) if penalty != int(penalty) else str(int(penalty)),
        ],
    )
    prompt = await page.input_value("#smp-prompt")
    body = {
        "prompt": prompt,
        "top_k": 20,
        "explain": True,
        "temperature": temperature,
        "sample_top_k": top_k,
        "top_p": top_p,
        "repetition_penalty": penalty,
    }
    stages: list[dict[str, Any]] = _post(live_server, "/next-token-probs", body)["stages"]
    return stages


async def _bars(page: Any) -> tuple[list[str], list[str], list[float]]:
    """(kept tokens, cut tokens, kept probabilities) of the chart as shown."""
    kept = await page.locator('#smp-chart .stage-bar[data-kept="true"]').evaluate_all(
        "els => els.map(e => e.dataset.token)"
    )
    cut = await page.locator('#smp-chart .stage-bar[data-kept="false"]').evaluate_all(
        "els => els.map(e => e.dataset.token)"
    )
    probabilities = await page.locator('#smp-chart .stage-bar[data-kept="true"]').evaluate_all(
        "els => els.map(e => Number(e.dataset.probability))"
    )
    return kept, cut, probabilities


async def _slide(page: Any, selector: str, value: float) -> None:
    """Move a range input as a drag would: its value changes, then an input event."""
    await page.locator(selector).evaluate(
        "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', { bubbles: true })); }", value
    )


async def test_sampler_bars_and_cut_offs_follow_the_sliders(page: Any, live_server: str, screenshot_dir: Path) -> None:
    # the defaults turn every step off: the model's own distribution, 20 bars, none cut
    stages = await _sampler_shows(page, live_server, temperature=1, top_k=0, top_p=1, penalty=1)
    assert [s["name"] for s in stages] == ["model"]
    kept, cut, probabilities = await _bars(page)
    assert kept == [t["token"] for t in stages[0]["top"]] and len(kept) == 20
    assert cut == [] and await page.locator("#smp-chart .stage-cutoff").count() == 0
    assert probabilities == pytest.approx([t["probability"] for t in stages[0]["top"]], abs=1e-9)

    # top-k to 3 from the keyboard: three bars inside the cut-off, the other 17 greyed below it
    await page.locator("#smp-topk").focus()
    for _ in range(3):
        await page.keyboard.press("ArrowRight")
    assert await page.locator("#smp-topk-value").inner_text() == "3"
    stages = await _sampler_shows(page, live_server, temperature=1, top_k=3, top_p=1, penalty=1)
    assert [s["name"] for s in stages] == ["model", "top_k"]
    kept, cut, probabilities = await _bars(page)
    assert kept == [t["token"] for t in stages[-1]["top"]] and len(kept) == 3
    assert probabilities == pytest.approx([t["probability"] for t in stages[-1]["top"]], abs=1e-9)
    assert abs(sum(probabilities) - 1) < 1e-6  # the kept three scaled up to 100 %
    assert cut == [t["token"] for t in stages[0]["top"][3:]]
    rows = await page.locator("#smp-chart .stage-bars > li").evaluate_all("els => els.map(e => e.className)")
    assert rows.index("stage-cutoff") == 3  # the line sits right after the kept bars
    assert (
        await page.locator('#smp-chart .stage-bar[data-kept="false"]').first.evaluate(
            "el => Number(getComputedStyle(el).opacity)"
        )
        < 1
    )
    assert "3 kept" in await page.locator('#smp-chart .stage-step[data-stage="top_k"]').inner_text()

    # every step on: the chart opens on the last (the distribution drawn from), each earlier one a click away
    await _slide(page, "#smp-temp", 0.6)
    await _slide(page, "#smp-topk", 10)
    await _slide(page, "#smp-topp", 0.5)
    await _slide(page, "#smp-rep", 1.3)
    stages = await _sampler_shows(page, live_server, temperature=0.6, top_k=10, top_p=0.5, penalty=1.3)
    assert [s["name"] for s in stages] == ["model", "repetition_penalty", "temperature", "top_k", "top_p"]
    assert await page.locator("#smp-chart .stage-step").evaluate_all("els => els.map(e => e.dataset.stage)") == [
        s["name"] for s in stages
    ]
    assert await page.locator('#smp-chart .stage-step[aria-pressed="true"]').get_attribute("data-stage") == "top_p"
    kept, cut, _ = await _bars(page)
    assert kept == [t["token"] for t in stages[-1]["top"]] and len(kept) == stages[-1]["kept"] < 10
    assert "top-p" in await page.locator("#smp-info").inner_text()
    await page.mouse.move(0, 0)
    await _shot(page, screenshot_dir, "sampler", "#sampler")
    await page.locator('#smp-chart .stage-step[data-stage="temperature"]').click()
    kept, cut, probabilities = await _bars(page)
    assert kept == [t["token"] for t in stages[2]["top"]] and cut == []
    assert probabilities == pytest.approx([t["probability"] for t in stages[2]["top"]], abs=1e-9)

    # Reset turns them all off again
    await page.click("#smp-reset")
    await _sampler_shows(page, live_server, temperature=1, top_k=0, top_p=1, penalty=1)
    assert await page.locator("#smp-chart .stage-step").count() == 1


async def test_sampler_on_a_phone(phone_page: Any, live_server: str, screenshot_dir: Path) -> None:
    await _sampler_shows(phone_page, live_server, temperature=1, top_k=0, top_p=1, penalty=1)
    await _slide(phone_page, "#smp-topp", 0.6)
    stages = await _sampler_shows(phone_page, live_server, temperature=1, top_k=0, top_p=0.6, penalty=1)
    kept, _, _ = await _bars(phone_page)
    assert kept == [t["token"] for t in stages[-1]["top"]]
    overflow = await phone_page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    await _shot(phone_page, screenshot_dir, "sampler-phone", "#sampler")


# --- generation, tinted and explained ------------------------------------------------------------


async def _generate(
    page: Any, prompt: str, *, temperature: str, max_tokens: str, seed: str = ""
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate from the page; return the token events and the done event the page itself received."""
    await page.fill("#gen-prompt", prompt)
    await page.fill("#gen-temp", temperature)
    await page.fill("#gen-topp", "0.9")
    await page.fill("#gen-max", max_tokens)
    await page.fill("#gen-seed", seed)
    async with page.expect_response(lambda r: r.url.endswith("/generate")) as answer:
        await page.click("#gen-start")
    response = await answer.value
    await page.wait_for_function(
        "() => ['done', 'error'].includes(document.getElementById('gen-status').dataset.state)"
    )
    assert (await page.locator("#gen-status").inner_text()).startswith("Done (")
    request = json.loads(response.request.post_data)
    assert request["explain"] is True and request["stream"] is True
    events = parse_sse(await response.text())
    tokens = [data for name, data in events if name == "token"]
    done = next(data for name, data in events if name == "done")
    return tokens, done


async def test_generation_is_tinted_by_surprisal_or_entropy_and_explains_each_token(
    page: Any, screenshot_dir: Path
) -> None:
    import math

    tokens, done = await _generate(
        page, "Once upon a time, in a small village by the sea,", temperature="0.9", max_tokens="24", seed="11"
    )
    spans = page.locator("#gen-output .gen-token")
    assert await spans.count() == len(tokens) > 0
    # surprisal first: each token carries its own, and the tint follows it (green expected, red surprising)
    assert await page.locator("#gen-output").get_attribute("data-tint") == "surprisal"
    values = await spans.evaluate_all("els => els.map(e => Number(e.dataset.value))")
    assert values == pytest.approx([t["explain"]["surprisal"] for t in tokens], abs=1e-12)
    colours = await spans.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    low, high = values.index(min(values)), values.index(max(values))
    if values[high] - values[low] > 1:
        assert colours[low] != colours[high]
    assert "surprisal" in await page.locator("#gen-legend-title").inner_text()
    # the request's perplexity, which is exp of the mean surprisal
    perplexity = float(await page.locator("#gen-perplexity").get_attribute("data-value"))
    assert perplexity == pytest.approx(done["perplexity"], rel=1e-12)
    assert perplexity == pytest.approx(math.exp(sum(t["explain"]["surprisal"] for t in tokens) / len(tokens)), rel=1e-6)
    assert f"{done['perplexity']:.2f}" in await page.locator("#gen-perplexity").inner_text()

    # entropy: another reading of the same tokens
    await page.check("#gen-tint-entropy")
    assert await page.locator("#gen-output").get_attribute("data-tint") == "entropy"
    values = await spans.evaluate_all("els => els.map(e => Number(e.dataset.value))")
    assert values == pytest.approx([t["explain"]["entropy"] for t in tokens], abs=1e-12)
    assert "entropy" in await page.locator("#gen-legend-title").inner_text()

    # hovering shows the numbers, a click shows the stages, the last one the token was drawn from
    step = tokens[3]
    assert f"surprisal {step['explain']['surprisal']:.2f} nats" in await spans.nth(3).get_attribute("title")
    await spans.nth(3).click()
    stages = page.locator("#gen-stages")
    await stages.wait_for(state="visible")
    names = [s["name"] for s in step["explain"]["stages"]]
    assert names == ["model", "temperature", "top_p"]
    assert await stages.locator(".stage-step").evaluate_all("els => els.map(e => e.dataset.stage)") == names
    kept = await stages.locator('.stage-bar[data-kept="true"]').evaluate_all("els => els.map(e => e.dataset.token)")
    assert kept == [t["token"] for t in step["explain"]["stages"][-1]["top"]]
    draw = step["explain"]["draw"]
    if draw["rank"] < len(kept):  # the drawn token is marked; drawn from further down, the list says so
        assert await stages.locator(".stage-bar.chosen").first.get_attribute("data-id") == str(step["id"])
        assert kept[draw["rank"]] == step["token"]
    else:
        assert f"the one drawn (rank {draw['rank']})" in await stages.locator(".stage-more.chosen").inner_text()
    assert f"u = {step['explain']['draw']['u']:.3f}" in await stages.locator(".stage-summary").inner_text()
    assert await page.locator("#gen-inspector .bar-row").count() == 5  # the alternatives stay as they were
    await page.mouse.move(0, 0)
    await _shot(page, screenshot_dir, "generation-explained", "#generate")

    # the keyboard steps through the tokens
    await page.locator("#gen-output").focus()
    await page.keyboard.press("ArrowRight")
    assert await stages.get_attribute("data-index") == str(tokens[4]["index"])
    await page.keyboard.press("Home")
    assert await stages.get_attribute("data-index") == str(tokens[0]["index"])

    # greedy: one stage, and the draw says so
    tokens, _ = await _generate(page, "The capital of France is", temperature="0", max_tokens="3")
    await spans.first.click()
    assert await stages.locator(".stage-step").count() == len(tokens[0]["explain"]["stages"])
    assert tokens[0]["explain"]["draw"]["greedy"] is True
    assert "Greedy" in await stages.locator(".stage-summary").inner_text()


async def test_generation_explained_on_a_phone(phone_page: Any, screenshot_dir: Path) -> None:
    tokens, _ = await _generate(phone_page, "Once upon a time,", temperature="0.8", max_tokens="16", seed="3")
    await phone_page.locator("#gen-output .gen-token").nth(1).tap()
    await phone_page.locator("#gen-stages").wait_for(state="visible")
    kept = await phone_page.locator('#gen-stages .stage-bar[data-kept="true"]').evaluate_all(
        "els => els.map(e => e.dataset.token)"
    )
    assert kept == [t["token"] for t in tokens[1]["explain"]["stages"][-1]["top"]]
    overflow = await phone_page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    await _shot(phone_page, screenshot_dir, "generation-explained-phone", "#generate")


# --- the inspection views load when they come into view -----------------------------------------

INSPECT_VIEWS = {"lens": "/inspect/logit-lens", "attention": "/inspect/attention", "tree": "/inspect/tree"}


async def _in_view(page: Any, section: str) -> bool:
    return bool(
        await page.evaluate(
            "(id) => { const r = document.getElementById(id).getBoundingClientRect();"
            " return r.bottom > 0 && r.top < window.innerHeight; }",
            section,
        )
    )


async def _scroll_to(page: Any, section: str) -> None:
    """Jump (no smooth scrolling past other panels) so that the panel's top is the viewport's top."""
    await page.evaluate(
        "(id) => document.getElementById(id).scrollIntoView({ block: 'start', behavior: 'instant' })", section
    )


async def test_inspection_views_ask_for_nothing_until_they_come_into_view(page: Any, live_server: str) -> None:
    asked: Counter[str] = Counter()
    page.on("request", lambda request: asked.update([urlsplit(request.url).path]))
    await page.goto(live_server + "/")  # the page again, heard from its first request
    await page.wait_for_function("() => document.getElementById('service-status').dataset.state === 'ready'")
    await page.wait_for_function(
        "() => document.querySelectorAll('#tok-chips .chip').length > 0"
        " && document.querySelectorAll('#nt-candidates .candidate').length > 0"
    )
    await page.wait_for_load_state("networkidle")
    assert asked["/tokenize"] and asked["/next-token-probs"]  # the panels on the first screen asked
    for section in INSPECT_VIEWS:
        assert not await _in_view(page, section), f"#{section} is on the first screen"
    assert [path for path in asked if path.startswith("/inspect/")] == []

    # a short window, so that one panel at a time comes into view: the lens first, and only the lens asks
    await page.set_viewport_size({"width": 1280, "height": 240})
    await _scroll_to(page, "lens")
    await page.wait_for_function(
        "() => { const g = document.getElementById('lens-grid');"
        " return g.dataset.prompt === document.getElementById('lens-prompt').value && g.getAttribute('aria-busy') === 'false'; }"
    )
    assert await page.locator("#lens-grid .lens-cell").count() > 0
    assert asked["/inspect/logit-lens"] == 1
    for section in ("attention", "tree"):
        assert not await _in_view(page, section)  # not seen yet...
        assert asked[INSPECT_VIEWS[section]] == 0  # ...so not asked
    # then the attention view and the tree, each asking once as it comes into view, and drawing its answer
    await _scroll_to(page, "attention")
    await page.wait_for_function(
        "() => { const v = document.getElementById('att-view');"
        " return v.dataset.prompt === document.getElementById('att-prompt').value && v.getAttribute('aria-busy') === 'false'; }"
    )
    assert await page.locator("#att-tokens .att-token").count() > 0
    assert asked["/inspect/attention"] == 1
    await _scroll_to(page, "tree")
    await page.wait_for_function(
        "() => { const v = document.getElementById('tree-view');"
        " return v.dataset.prompt === document.getElementById('tree-prompt').value && v.getAttribute('aria-busy') === 'false'; }"
    )
    assert await page.locator("#tree-view .tree-node").count() > 0
    assert asked["/inspect/tree"] == 1
    # seen once is enough: scrolling away and back asks nothing more
    await _scroll_to(page, "digits")
    await _scroll_to(page, "lens")
    await page.wait_for_load_state("networkidle")
    assert {path: asked[path] for path in INSPECT_VIEWS.values()} == dict.fromkeys(INSPECT_VIEWS.values(), 1)


# --- logit lens ----------------------------------------------------------------------------------


async def _lens_for(page: Any, live_server: str, prompt: str, top_k: int = 5) -> dict[str, Any]:
    count = _post(live_server, "/tokenize", {"text": prompt})["count"]
    expected: dict[str, Any] = _post(
        live_server, "/inspect/logit-lens", {"prompt": prompt, "top_k": top_k, "positions": list(range(count))}
    )
    await page.fill("#lens-prompt", prompt)
    await page.wait_for_function(
        "(t) => { const el = document.getElementById('lens-grid'); return el.dataset.prompt === t && el.getAttribute('aria-busy') === 'false'; }",
        arg=prompt,
    )
    return expected


async def test_logit_lens_grid_shows_every_layer_and_position(
    page: Any, live_server: str, screenshot_dir: Path
) -> None:
    prompt = "The capital of France is"
    expected = await _lens_for(page, live_server, prompt)
    positions = expected["positions"]
    layers = [cell["layer"] for cell in positions[0]["layers"]]
    assert layers == list(range(expected["layers"] + 1))  # the embeddings and every decoder layer
    cells = page.locator("#lens-grid .lens-cell")
    assert await cells.count() == len(layers) * len(positions) == (expected["layers"] + 1) * 5
    shown = await cells.evaluate_all(
        "els => els.map(e => [Number(e.dataset.layer), Number(e.dataset.position), e.dataset.token, e.classList.contains('final')])"
    )
    want = [
        [cell["layer"], row["position"], cell["top"][0]["token"], cell["final_token_rank"] == 1]
        for layer in reversed(layers)
        for row in positions
        for cell in row["layers"]
        if cell["layer"] == layer
    ]
    assert shown == want
    # the output row's last cell is the model's answer, ringed; shading follows the probability
    assert want[len(positions) - 1][2] == positions[-1]["final_token"]["token"] == " Paris"
    heavy = page.locator(f'#lens-grid .lens-cell[data-layer="{expected["layers"]}"][data-position="4"]')
    light = page.locator('#lens-grid .lens-cell[data-layer="0"][data-position="0"]')
    alpha = "el => Number(getComputedStyle(el).backgroundColor.split(',')[3].replace(')', ''))"
    p_heavy = positions[4]["layers"][-1]["top"][0]["probability"]
    p_light = positions[0]["layers"][0]["top"][0]["probability"]
    assert (await heavy.evaluate(alpha) > await light.evaluate(alpha)) == (p_heavy > p_light)

    # a click lists the cell's top k
    layer = expected["layers"] // 2
    await page.locator(f'#lens-grid .lens-cell[data-layer="{layer}"][data-position="3"]').click()
    detail = page.locator("#lens-detail")
    await detail.wait_for(state="visible")
    cell = positions[3]["layers"][layer]
    assert await detail.locator("li").evaluate_all("els => els.map(e => e.dataset.token)") == [
        t["token"] for t in cell["top"]
    ]
    assert f"ranked {cell['final_token_rank']} here" in await detail.inner_text()

    # the keyboard: arrows move between cells, Enter opens one
    await page.locator(f'#lens-grid .lens-cell[data-layer="{layer}"][data-position="3"]').focus()
    await page.keyboard.press("ArrowUp")
    await page.keyboard.press("ArrowRight")
    await page.keyboard.press("Enter")
    focused = await page.evaluate(
        "() => [document.activeElement.dataset.layer, document.activeElement.dataset.position]"
    )
    assert focused == [str(layer + 1), "4"]
    top = positions[4]["layers"][layer + 1]["top"]
    assert await detail.locator("li").evaluate_all("els => els.map(e => e.dataset.token)") == [t["token"] for t in top]
    await page.mouse.move(0, 0)
    await _shot(page, screenshot_dir, "logit-lens", "#lens")

    # a smaller top k is asked again, and the open cell stays open
    await page.fill("#lens-topk", "2")
    await page.press("#lens-topk", "Tab")
    await page.wait_for_function("() => document.querySelectorAll('#lens-detail li').length === 2")


async def test_logit_lens_on_a_phone(phone_page: Any, live_server: str, screenshot_dir: Path) -> None:
    expected = await _lens_for(phone_page, live_server, "One, two, three, four, five, six, seven, eight, nine, ten")
    count = len(expected["positions"])
    assert count > 16  # more positions than the grid shows: the last 16
    shown = await phone_page.locator("#lens-grid thead .lens-pos").count()
    assert shown == 16
    assert f"the last 16 of {count}" in await phone_page.locator("#lens-info").inner_text()
    last = (
        await phone_page.locator("#lens-grid tbody tr")
        .first.locator(".lens-cell")
        .evaluate_all("els => els.map(e => e.dataset.token)")
    )
    assert last == [row["layers"][-1]["top"][0]["token"] for row in expected["positions"][-16:]]
    overflow = await phone_page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone (the grid should scroll inside itself)"
    await _shot(phone_page, screenshot_dir, "logit-lens-phone", "#lens")


# --- attention -----------------------------------------------------------------------------------


async def _attention_shown(page: Any, prompt: str, layer: int, head: str) -> None:
    await page.wait_for_function(
        """([t, l, h]) => { const el = document.getElementById('att-view');
            return el.dataset.prompt === t && el.dataset.layer === l && el.dataset.head === h && el.getAttribute('aria-busy') === 'false'; }""",
        arg=[prompt, str(layer), head],
    )


async def _assert_row(page: Any, query: int, weights: list[float]) -> None:
    """The tinted tokens and the heatmap's row for `query` both carry the API's weights; later tokens none."""
    tokens = await page.locator("#att-tokens .att-token").evaluate_all("els => els.map(e => e.dataset.weight)")
    assert [float(w) for w in tokens[: query + 1]] == pytest.approx(weights, abs=1e-6)
    assert all(w == "" for w in tokens[query + 1 :])
    row = page.locator(f'#att-matrix .att-row[data-query="{query}"]')
    assert await row.evaluate("el => el.classList.contains('chosen')")
    cells = await row.locator(".att-cell:not(.future)").evaluate_all("els => els.map(e => Number(e.dataset.weight))")
    assert cells == pytest.approx(weights, abs=1e-6)
    assert await page.locator("#att-tokens .att-token.query").get_attribute("data-position") == str(query)


async def test_attention_heatmap_row_of_a_clicked_token(page: Any, live_server: str, screenshot_dir: Path) -> None:
    prompt = "The cat sat on the mat because it was tired"
    last_layer = _post(live_server, "/inspect/attention", {"prompt": prompt, "layers": [-1], "mean_over_heads": True})
    n = len(last_layer["prompt_tokens"])
    await page.fill("#att-prompt", prompt)
    await _attention_shown(page, prompt, last_layer["maps"][0]["layer"], "mean")
    # layer and head pickers: every layer, and the mean over heads then each head
    assert await page.locator("#att-layer option").count() == last_layer["maps"][0]["layer"] + 1
    assert await page.locator("#att-head option").evaluate_all("els => els.map(e => e.value)") == ["mean"] + [
        str(h) for h in last_layer["heads"]
    ]
    assert await page.locator("#att-matrix .att-row").count() == n
    await _assert_row(page, n - 1, last_layer["maps"][0]["weights"][n - 1])  # the last token is chosen first

    await page.select_option("#att-layer", "3")
    await _attention_shown(page, prompt, 3, "mean")
    mean = _post(live_server, "/inspect/attention", {"prompt": prompt, "layers": [3], "mean_over_heads": True})["maps"][
        0
    ]["weights"]
    it = [t["token"] for t in last_layer["prompt_tokens"]].index(" it")
    await page.locator(f'#att-tokens .att-token[data-position="{it}"]').click()
    await _assert_row(page, it, mean[it])

    await page.select_option("#att-head", "2")
    await _attention_shown(page, prompt, 3, "2")
    head = _post(live_server, "/inspect/attention", {"prompt": prompt, "layers": [3], "heads": [2]})["maps"][0][
        "weights"
    ]
    await _assert_row(page, it, head[it])  # the chosen token stays chosen
    # keyboard: ← on the tokens chooses the one before; a row label in the heatmap chooses its token
    await page.locator("#att-tokens .att-token.query").focus()
    await page.keyboard.press("ArrowLeft")
    await _assert_row(page, it - 1, head[it - 1])
    await page.locator('#att-matrix .att-row[data-query="1"] .att-row-label').click()
    await _assert_row(page, 1, head[1])
    await page.locator(f'#att-tokens .att-token[data-position="{it}"]').click()
    await page.mouse.move(0, 0)
    await _shot(page, screenshot_dir, "attention", "#attention")


async def test_attention_on_a_phone(phone_page: Any, live_server: str, screenshot_dir: Path) -> None:
    prompt = "The cat sat on the mat because it was tired"
    await phone_page.fill("#att-prompt", prompt)
    await phone_page.wait_for_function("(t) => document.getElementById('att-view').dataset.prompt === t", arg=prompt)
    await phone_page.locator('#att-tokens .att-token[data-position="7"]').tap()
    assert await phone_page.locator("#att-tokens .att-token.query").get_attribute("data-position") == "7"
    overflow = await phone_page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    await _shot(phone_page, screenshot_dir, "attention-phone", "#attention")


# --- continuation tree ---------------------------------------------------------------------------


async def _children(node: Any) -> list[tuple[str, float]]:
    items = node.locator(":scope > details > .tree-children > .tree-node, :scope > .tree-node")
    pairs = await items.evaluate_all("els => els.map(e => [e.dataset.token, Number(e.dataset.probability)])")
    return [(t, p) for t, p in pairs]


async def test_continuation_tree_children_and_expanding(page: Any, live_server: str, screenshot_dir: Path) -> None:
    prompt = "The capital of France is"
    expected = _post(live_server, "/inspect/tree", {"prompt": prompt, "depth": 3, "branching": 3})
    await page.fill("#tree-prompt", prompt)
    await page.wait_for_function(
        "(t) => { const el = document.getElementById('tree-view'); return el.dataset.prompt === t && el.getAttribute('aria-busy') === 'false'; }",
        arg=prompt,
    )
    root = page.locator("#tree-view .tree-children.top")
    shown = await _children(root)
    assert [t for t, _ in shown] == [c["token"] for c in expected["children"]]
    assert [p for _, p in shown] == pytest.approx([c["probability"] for c in expected["children"]], abs=1e-9)
    assert await page.locator("#tree-view .tree-node").count() == expected["nodes"] == 3 + 9 + 27
    assert await page.locator("#tree-info strong").inner_text() == str(expected["nodes"])

    # the likeliest path starts open; the second child is closed until clicked, then shows its children
    first, second = root.locator(":scope > .tree-node").nth(0), root.locator(":scope > .tree-node").nth(1)
    assert await first.locator(":scope > details").evaluate("d => d.open")
    assert not await second.locator(":scope > details").evaluate("d => d.open")
    assert not await second.locator(":scope > details > .tree-children").is_visible()
    await second.locator(":scope > details > summary").click()
    assert await second.locator(":scope > details > .tree-children").is_visible()
    grandchildren = await _children(second)
    assert [t for t, _ in grandchildren] == [c["token"] for c in expected["children"][1]["children"]]
    # from the keyboard: Enter on a summary opens it
    third = root.locator(":scope > .tree-node").nth(2)
    await third.locator(":scope > details > summary").focus()
    await page.keyboard.press("Enter")
    assert await third.locator(":scope > details").evaluate("d => d.open")
    # the likeliest whole paths, as the API ranks them
    leaves = await page.locator("#tree-leaves .tok").all_inner_texts()
    assert len(leaves) == 5
    assert [t.replace("·", " ").replace("↵", "\n") for t in leaves] == [leaf["text"] for leaf in expected["leaves"][:5]]
    await page.mouse.move(0, 0)
    await _shot(page, screenshot_dir, "continuation-tree", "#tree")

    # depth and branching are asked again
    await page.fill("#tree-branching", "2")
    await page.press("#tree-branching", "Tab")
    await page.wait_for_function("() => document.getElementById('tree-view').dataset.branching === '2'")
    assert await page.locator("#tree-view .tree-node").count() == 2 + 4 + 8


# --- why that digit ------------------------------------------------------------------------------


async def _explained(page: Any, live_server: str, label: int) -> dict[str, Any]:
    """Wait until the panel explains the pad's final picture; return the API's explanation of that picture."""
    await page.wait_for_function(
        """() => { const b = document.getElementById('why-body');
            return !b.hidden && b.getAttribute('aria-busy') === 'false'
                && document.querySelector('.digit-result').getAttribute('aria-busy') === 'false'; }""",
    )
    assert await page.locator("#why-body").get_attribute("data-digit") == str(label)
    assert await page.locator("#digit-prediction").inner_text() == str(label)
    png = await page.evaluate("() => document.getElementById('digit-canvas').toDataURL('image/png').split(',')[1]")
    explanation: dict[str, Any] = _post(live_server, "/classify-digit", {"image": png, "explain": True})["explain"]
    return explanation


async def _saliency_pixel(page: Any, x: int, y: int) -> list[int]:
    rgb: list[int] = await page.evaluate(
        "([x, y]) => [...document.getElementById('why-saliency').getContext('2d').getImageData(x, y, 1, 1).data].slice(0, 3)",
        [x, y],
    )
    return rgb


def _strongest(rows: list[list[float]]) -> tuple[int, int, float]:
    _, x, y = max((abs(v), x, y) for y, row in enumerate(rows) for x, v in enumerate(row))
    return x, y, rows[y][x]


async def test_digit_why_shows_saliency_units_and_neighbours(page: Any, live_server: str, screenshot_dir: Path) -> None:
    from test_playground import _draw, _heldout_digits

    assert await page.locator("#why-body").is_hidden()
    _, label, image = _heldout_digits([3])[0]
    await page.locator("#digit-canvas").scroll_into_view_if_needed()
    await _draw(page, image)
    expected = await _explained(page, live_server, label)
    assert expected["digit"] == label

    # the nearest training digits, nearest first, with their labels
    neighbours = page.locator("#why-neighbours .why-neighbour")
    assert await neighbours.evaluate_all("els => els.map(e => [Number(e.dataset.index), Number(e.dataset.label)])") == [
        [n["index"], n["label"]] for n in expected["neighbours"]
    ]
    assert [t.split()[0] for t in await neighbours.all_inner_texts()] == [
        str(n["label"]) for n in expected["neighbours"]
    ]
    # the units that added most, largest first, and what they add
    units = page.locator("#why-units .why-unit")
    assert await units.evaluate_all("els => els.map(e => Number(e.dataset.unit))") == [
        u["unit"] for u in expected["top_units"]
    ]
    assert await units.evaluate_all("els => els.map(e => Number(e.dataset.contribution))") == pytest.approx(
        [u["contribution"] for u in expected["top_units"]], abs=1e-9
    )
    assert f"the logit {expected['logit']:.2f}" in await page.locator("#why-units-sum").inner_text()

    # the saliency: the strongest gradient's pixel takes its sign's colour (orange raises, blue lowers)
    x, y, value = _strongest(expected["logit_saliency"])
    r, _, b = await _saliency_pixel(page, x, y)
    assert (r > b) == (value > 0), (x, y, value, r, b)
    await page.select_option("#why-saliency-kind", "probability")
    assert await page.locator("#why-saliency").get_attribute("data-kind") == "probability"
    x, y, value = _strongest(expected["saliency"])
    r, _, b = await _saliency_pixel(page, x, y)
    assert (r > b) == (value > 0), (x, y, value, r, b)
    await page.select_option("#why-saliency-kind", "logit")

    # every unit's weights on demand, the top units outlined among them
    weights = _get(live_server, "/inspect/digits/weights")
    await page.click("#why-all summary")
    await page.wait_for_function(
        "(n) => document.querySelectorAll('#why-all-units .why-unit').length === n", arg=len(weights["units"])
    )
    outlined = await page.locator("#why-all-units .why-unit.top").evaluate_all(
        "els => els.map(e => Number(e.dataset.unit))"
    )
    assert sorted(outlined) == sorted(u["unit"] for u in expected["top_units"])
    await page.click("#why-all summary")
    await page.mouse.move(0, 0)
    await _shot(page, screenshot_dir, "digit-why", "#digit-why")

    # Clear on the pad clears the explanation
    await page.click("#digit-clear")
    await page.locator("#why-body").wait_for(state="hidden")


async def test_digit_why_on_a_phone(phone_page: Any, live_server: str, screenshot_dir: Path) -> None:
    from test_playground import _heldout_digits, _ink_strokes

    _, label, image = _heldout_digits([6])[0]
    page = phone_page
    await page.locator("#digit-canvas").scroll_into_view_if_needed()
    box = await page.locator("#digit-canvas").bounding_box()
    scale = box["width"] / 28
    cdp = await page.context.new_cdp_session(page)
    for row, first, last in _ink_strokes(image):  # drawn with a finger, as on a phone
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
    expected = await _explained(phone_page, live_server, label)
    labels = await phone_page.locator("#why-neighbours .why-neighbour").evaluate_all(
        "els => els.map(e => Number(e.dataset.label))"
    )
    assert labels == [n["label"] for n in expected["neighbours"]]
    overflow = await phone_page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    await _shot(phone_page, screenshot_dir, "digit-why-phone", "#digit-why")
