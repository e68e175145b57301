// Generation, streamed: each token tinted by how surprising it was (or how unsure the model was), and why it
// was drawn.
//
//   POST /generate {"prompt" | "messages", "stream": true, "explain": true, "top_alternatives": 5, ...}
//     -> Server-Sent Events: token* ({index, id, token, text, probability, alternatives, explain: {entropy,
//        surprisal, margin, stages, draw}}), then done ({finish_reason, usage, timing, perplexity}) | error
"use strict";

(() => {
  const { $, el, ApiError, describeError, streamEvents, showError, pct, visibleToken, barRow } = window.Playground;

  const SCALE_NATS = 8; // the tint's red end: 8 nats is a token of probability e^-8 ≈ 0.03 %, or ~3,000 equal choices
  const MEASURES = {
    surprisal: {
      of: (step) => (step.explain ? step.explain.surprisal : -step.logprob),
      legend: "surprisal of each token, −ln p (nats)",
      ends: ["expected", "surprising"],
    },
    entropy: {
      of: (step) => (step.explain ? step.explain.entropy : null),
      legend: "entropy of the model's guess at each step (nats)",
      ends: ["sure", "unsure"],
    },
  };

  /** Green (0 nats) through amber to red (SCALE_NATS and more); no value, no tint. */
  const tint = (nats) =>
    nats === null || nats === undefined ? "" : `hsl(${Math.round((1 - Math.min(1, Math.max(0, nats) / SCALE_NATS)) * 130)} 80% 80%)`;

  function setupGeneration() {
    const form = $("gen-form");
    const prompt = $("gen-prompt");
    const temp = $("gen-temp");
    const topp = $("gen-topp");
    const maxTokens = $("gen-max");
    const seed = $("gen-seed");
    const chat = $("gen-chat");
    const start = $("gen-start");
    const stop = $("gen-stop");
    const output = $("gen-output");
    const status = $("gen-status");
    const inspector = $("gen-inspector");
    const stagesEl = $("gen-stages");
    const perplexityEl = $("gen-perplexity");
    const legendTitle = $("gen-legend-title");
    const legendEnds = $("gen-legend-ends");
    const errorEl = $("gen-error");
    let controller = null;
    let selected = null;
    let shown = []; // [span, step] of every token in the output, in order
    let shownStage = null; // the sampler step picked in the token inspector, kept from token to token

    const measure = () => MEASURES[document.querySelector('input[name="gen-tint"]:checked').value];

    function retint() {
      const m = measure();
      legendTitle.textContent = m.legend;
      legendEnds.textContent = "";
      legendEnds.append(el("span", null, `0 ${m.ends[0]}`), el("span", null, `${SCALE_NATS}+ ${m.ends[1]}`));
      output.dataset.tint = document.querySelector('input[name="gen-tint"]:checked').value;
      shown.forEach(([span, step]) => {
        const value = m.of(step);
        span.style.backgroundColor = tint(value);
        span.dataset.value = value === null || value === undefined ? "" : String(value);
      });
    }

    const setStatus = (state, text) => {
      status.dataset.state = state;
      status.textContent = text;
    };

    function inspect(span, step) {
      if (selected) selected.classList.remove("selected");
      selected = span;
      span.classList.add("selected");
      inspector.textContent = "";
      const title = document.createElement("h3");
      title.textContent = `Step ${step.index + 1}: picked ${JSON.stringify(step.token)} with probability ${pct(step.probability)}`;
      inspector.append(title);
      const alternatives = step.alternatives || [];
      alternatives.forEach((a) => {
        const label = document.createElement("span");
        visibleToken(a.token, label);
        inspector.append(barRow(label, a.probability, { top: a.id === step.id }));
      });
      if (!alternatives.length) inspector.append("No alternatives for this step.");
      inspector.hidden = false;
      showStages(step);
    }

    /** Why the token was drawn: the model's entropy, the token's surprisal, and each sampler step. */
    function showStages(step) {
      stagesEl.textContent = "";
      const e = step.explain;
      if (!e) {
        stagesEl.hidden = true;
        return;
      }
      stagesEl.dataset.index = String(step.index);
      const title = el("h3", null, `Why ${JSON.stringify(step.token)}: the sampler, step by step`);
      const facts = el("p", "stage-facts");
      facts.append(
        "surprisal ", el("strong", null, `${e.surprisal.toFixed(2)} nats`), " · entropy ", el("strong", null, `${e.entropy.toFixed(2)} nats`),
        " · margin of the two likeliest ", el("strong", null, pct(e.margin)),
      );
      const chart = window.PlaygroundStages.stageChart(e.stages, {
        selected: shownStage, chosenId: step.id, draw: e.draw, onSelect: (name) => (shownStage = name),
      });
      stagesEl.append(title, facts, chart);
      stagesEl.hidden = false;
    }

    function choose(index) {
      const entry = shown[Math.max(0, Math.min(shown.length - 1, index))];
      if (!entry) return;
      inspect(entry[0], entry[1]);
      entry[0].scrollIntoView({ block: "nearest" });
    }

    function tokenSpan(step) {
      const span = document.createElement("span");
      span.className = "gen-token" + (step.special ? " special" : "");
      const text = step.text !== undefined && step.text !== null ? step.text : step.token;
      // Newlines are shown as ↵ (then the line break itself), so that they can be seen and hovered.
      text.split(/(\n)/).forEach((part) => {
        if (part === "\n") {
          const mark = document.createElement("span");
          mark.className = "nl";
          mark.textContent = "↵";
          span.append(mark, "\n");
        } else if (part) {
          span.append(part);
        }
      });
      const value = measure().of(step);
      span.style.backgroundColor = tint(value);
      span.dataset.value = value === null || value === undefined ? "" : String(value);
      span.dataset.index = String(step.index);
      const alts = (step.alternatives || []).map((a) => `${JSON.stringify(a.token)} ${pct(a.probability)}`).join("\n");
      const e = step.explain;
      const why = e
        ? `\nsurprisal ${e.surprisal.toFixed(2)} nats · entropy ${e.entropy.toFixed(2)} nats\nsampler: ` +
          e.stages.map((st) => `${window.PlaygroundStages.label(st.name)} ${st.kept.toLocaleString("en-US")}`).join(" → ") +
          (e.draw.greedy ? " · greedy" : ` · drawn rank ${e.draw.rank}`)
        : "";
      span.title = `${JSON.stringify(step.token)} · probability ${pct(step.probability)}` + why + (alts ? `\nalternatives:\n${alts}` : "");
      span.addEventListener("click", () => inspect(span, step));
      shown.push([span, step]);
      return span;
    }

    function readNumber(input, name, { integer = false, optional = false } = {}) {
      const raw = input.value.trim();
      if (raw === "") {
        if (optional) return undefined;
        throw new ApiError(`${name}: enter a number`, 0, null);
      }
      const value = Number(raw);
      if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
        throw new ApiError(`${name}: “${raw}” is not ${integer ? "a whole number" : "a number"}`, 0, null);
      }
      return value;
    }

    async function generate() {
      if (controller) return;
      showError(errorEl, null);
      let body;
      try {
        const temperature = readNumber(temp, "Temperature");
        body = {
          max_new_tokens: readNumber(maxTokens, "Max tokens", { integer: true }),
          temperature,
          top_p: readNumber(topp, "Top p"),
          do_sample: temperature > 0,
          top_alternatives: 5,
          explain: true,
          stream: true,
        };
        const s = readNumber(seed, "Seed", { integer: true, optional: true });
        if (s !== undefined) body.seed = s;
        if (!prompt.value) throw new ApiError("Prompt: type something for the model to continue.", 0, null);
        if (chat.checked) body.messages = [{ role: "user", content: prompt.value }];
        else body.prompt = prompt.value;
      } catch (err) {
        showError(errorEl, err);
        return;
      }

      output.textContent = "";
      inspector.hidden = true;
      stagesEl.hidden = true;
      perplexityEl.hidden = true;
      selected = null;
      shown = [];
      if (!chat.checked) {
        const p = document.createElement("span");
        p.className = "prompt";
        p.textContent = prompt.value;
        output.append(p);
      }
      controller = new AbortController();
      start.disabled = true;
      stop.disabled = false;
      let count = 0;
      const began = performance.now();
      setStatus("running", "Generating…");
      try {
        let finished = false;
        await streamEvents(
          "/generate",
          body,
          (event, data) => {
            if (event === "token") {
              count += 1;
              output.append(tokenSpan(data));
              output.scrollTop = output.scrollHeight;
              const secs = (performance.now() - began) / 1000;
              setStatus("running", `Generating… ${count} token${count === 1 ? "" : "s"} · ${(count / Math.max(secs, 1e-3)).toFixed(1)} tokens/s`);
            } else if (event === "done") {
              finished = true;
              const t = data.timing || {};
              const speed = t.tokens_per_second ? ` · ${t.tokens_per_second.toFixed(1)} tokens/s` : "";
              const total = t.total_seconds !== undefined ? ` in ${t.total_seconds.toFixed(2)} s` : "";
              const n = data.usage ? data.usage.completion_tokens : count;
              setStatus("done", `Done (${data.finish_reason}): ${n} token${n === 1 ? "" : "s"}${total}${speed}`);
              showPerplexity(data.perplexity);
            } else if (event === "error") {
              finished = true;
              const message = describeError(500, data, "generation failed");
              setStatus("error", "Failed.");
              showError(errorEl, new ApiError(message, 500, data));
            }
          },
          { signal: controller.signal },
        );
        if (!finished) setStatus("stopped", `The stream ended early after ${count} tokens.`);
      } catch (err) {
        if (err.name === "AbortError") {
          setStatus("stopped", `Stopped after ${count} token${count === 1 ? "" : "s"}.`);
        } else {
          setStatus("error", "Failed.");
          showError(errorEl, err);
        }
      } finally {
        controller = null;
        start.disabled = false;
        stop.disabled = true;
      }
    }

    function showPerplexity(perplexity) {
      if (typeof perplexity !== "number") {
        perplexityEl.hidden = true;
        return;
      }
      perplexityEl.textContent = "";
      perplexityEl.dataset.value = String(perplexity);
      perplexityEl.append(
        "Perplexity ", el("strong", null, perplexity.toFixed(2)),
        `: on average the model was as unsure of the tokens it wrote as if choosing among ${perplexity.toFixed(1)} equally likely ones (1 = no surprise at all).`,
      );
      perplexityEl.hidden = false;
    }

    document.querySelectorAll('input[name="gen-tint"]').forEach((radio) => radio.addEventListener("change", retint));
    // The keyboard: in the output, ← and → step from token to token, Home and End jump to the ends.
    output.addEventListener("keydown", (event) => {
      if (!shown.length) return;
      const at = selected ? shown.findIndex(([span]) => span === selected) : -1;
      const to = { ArrowRight: at + 1, ArrowLeft: at < 0 ? shown.length - 1 : at - 1, Home: 0, End: shown.length - 1 }[event.key];
      if (to === undefined) return;
      event.preventDefault();
      choose(to);
    });
    retint();

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      generate();
    });
    prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        generate();
      }
    });
    stop.addEventListener("click", () => {
      if (controller) controller.abort(); // closing the connection makes the server cancel the generation
      start.focus();
    });
    $("gen-clear").addEventListener("click", () => {
      if (controller) controller.abort();
      output.innerHTML = '<span class="placeholder">The generated text appears here.</span>';
      inspector.hidden = true;
      stagesEl.hidden = true;
      perplexityEl.hidden = true;
      shown = [];
      selected = null;
      showError(errorEl, null);
      setStatus("idle", "Ready.");
    });
  }


  document.addEventListener("DOMContentLoaded", setupGeneration);
})();
