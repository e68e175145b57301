// Attention: which earlier tokens each token looks at, in one layer, for one head or the mean over heads.
//
//   POST /inspect/attention {"prompt", "layers": [l], "heads": [h]}            -> maps[0].weights: one row per query
//   POST /inspect/attention {"prompt", "layers": [l], "mean_over_heads": true}    position q, its weights over 0..q
//
// The prompt's tokens, tinted by how much the chosen token attends to each (click or Enter on a token to
// choose it), and the whole map as a heatmap: row q = what token q attends to, its row outlined.
"use strict";

(() => {
  const { $, el, api, debounce, latestOnly, whenShown, busyWhile, showError, pct, visibleToken } = window.Playground;

  const MAX_MATRIX = 64; // tokens up to which the whole map is drawn (the token view works for any length)
  // Shaded by the square root of the weight, so that 1 % is still visible beside a 90 % attention sink.
  const shade = (w) => `rgba(234, 88, 12, ${(0.04 + 0.9 * Math.sqrt(Math.max(0, Math.min(1, w)))).toFixed(3)})`;

  function setupAttention() {
    const prompt = $("att-prompt");
    const layerSelect = $("att-layer");
    const headSelect = $("att-head");
    const tokens = $("att-tokens");
    const matrix = $("att-matrix");
    const info = $("att-info");
    const view = $("att-view");
    const errorEl = $("att-error");
    let answer = null;
    let query = null; // the chosen query position

    function fillSelect(select, values, label, current) {
      const want = current !== undefined ? current : select.value;
      const keep = [...select.options].filter((o) => o.dataset.fixed === "true");
      select.textContent = "";
      keep.forEach((o) => select.append(o));
      values.forEach((v) => {
        const option = el("option", null, label(v));
        option.value = String(v);
        select.append(option);
      });
      if ([...select.options].some((o) => o.value === String(want))) select.value = String(want);
    }

    function choose(q, { focus = false } = {}) {
      if (!answer) return;
      const row = answer.query_positions.indexOf(q);
      if (row < 0) return;
      query = q;
      const weights = answer.maps[0].weights[row];
      tokens.querySelectorAll(".att-token").forEach((button, k) => {
        const w = k <= q ? weights[k] : null;
        button.classList.toggle("query", k === q);
        button.classList.toggle("future", w === null);
        button.setAttribute("aria-pressed", String(k === q));
        button.style.backgroundColor = w === null ? "" : shade(w);
        button.classList.toggle("strong", w !== null && w > 0.5);
        button.dataset.weight = w === null ? "" : String(w);
        button.querySelector(".att-weight").textContent = w === null ? "" : pct(w);
        button.title = w === null ? "after the chosen token: not seen" : `${JSON.stringify(answer.prompt_tokens[k].token)} gets ${pct(w)} of the attention`;
        if (focus && k === q) button.focus();
      });
      matrix.querySelectorAll(".att-row").forEach((r) => r.classList.toggle("chosen", Number(r.dataset.query) === q));
      const best = weights.reduce((b, w, k) => (w > weights[b] ? k : b), 0);
      const head = answer.mean_over_heads ? "the mean over heads" : `head ${answer.maps[0].head}`;
      info.textContent = "";
      info.append(
        "Token ", el("strong", null, JSON.stringify(answer.prompt_tokens[q].token)), ` (position ${q}) attends most to `,
        el("strong", null, JSON.stringify(answer.prompt_tokens[best].token)), ` (${pct(weights[best])}) · layer ${answer.maps[0].layer}, ${head}`,
      );
    }

    function drawTokens() {
      tokens.textContent = "";
      answer.prompt_tokens.forEach((t) => {
        const button = el("button", "att-token");
        button.type = "button";
        button.dataset.position = String(t.position);
        const text = el("span", "att-text");
        visibleToken(t.token, text);
        button.append(text, el("span", "att-weight"));
        button.addEventListener("click", () => choose(t.position));
        tokens.append(button);
      });
    }

    function drawMatrix() {
      matrix.textContent = "";
      const n = answer.prompt_tokens.length;
      if (n > MAX_MATRIX) {
        matrix.append(el("p", "hint", `The heatmap is drawn for prompts of up to ${MAX_MATRIX} tokens; this one has ${n}.`));
        return;
      }
      const weights = answer.maps[0].weights;
      const table = el("div", "att-grid");
      table.style.gridTemplateColumns = `minmax(3rem, 7rem) repeat(${n}, minmax(0, 1.6rem))`;
      table.setAttribute("role", "img");
      table.setAttribute("aria-label", "Attention map: row = the attending token, column = the token attended to");
      answer.query_positions.forEach((q, row) => {
        const line = el("div", "att-row");
        line.dataset.query = String(q);
        const label = el("button", "att-row-label");
        label.type = "button";
        label.tabIndex = -1; // the token buttons above are the keyboard's way in
        visibleToken(answer.prompt_tokens[q].token, label);
        label.addEventListener("click", () => choose(q));
        line.append(label);
        for (let k = 0; k < n; k++) {
          const cell = el("span", "att-cell");
          if (k <= q) {
            const w = weights[row][k];
            cell.dataset.weight = String(w);
            cell.style.backgroundColor = shade(w);
            cell.title = `${JSON.stringify(answer.prompt_tokens[q].token)} → ${JSON.stringify(answer.prompt_tokens[k].token)}: ${pct(w)}`;
          } else {
            cell.classList.add("future");
          }
          line.append(cell);
        }
        table.append(line);
      });
      matrix.append(table);
    }

    const run = latestOnly(async (signal) => {
      const text = prompt.value;
      if (!text) {
        tokens.textContent = "";
        matrix.textContent = "";
        info.textContent = "Type a prompt to see its attention.";
        showError(errorEl, null);
        return;
      }
      const layer = layerSelect.value === "" ? -1 : Number(layerSelect.value);
      const head = headSelect.value;
      const body = { prompt: text, layers: [layer] };
      if (head === "mean") body.mean_over_heads = true;
      else body.heads = [Number(head)];
      const result = await api("/inspect/attention", body, { signal });
      if (signal.aborted) return;
      const hadFocus = tokens.contains(document.activeElement);
      const samePrompt = answer && view.dataset.prompt === text;
      answer = result;
      view.dataset.prompt = text; // which request the view shows
      view.dataset.layer = String(result.maps[0].layer);
      view.dataset.head = result.mean_over_heads ? "mean" : String(result.maps[0].head);
      if (layerSelect.options.length === 0) {
        // the first answer, for the last layer, tells how many layers there are
        const layers = result.maps[0].layer + 1;
        fillSelect(layerSelect, Array.from({ length: layers }, (_, l) => l), (l) => `layer ${l}`, result.maps[0].layer);
      }
      if (result.mean_over_heads && headSelect.options.length <= 1) fillSelect(headSelect, result.heads, (h) => `head ${h}`, "mean");
      drawTokens();
      drawMatrix();
      const n = result.prompt_tokens.length;
      choose(samePrompt && query !== null && query < n ? query : n - 1, { focus: hadFocus });
      showError(errorEl, null);
    });

    const busy = busyWhile(view);
    const refresh = debounce(() => busy(run()).catch((err) => showError(errorEl, err)), 400);
    prompt.addEventListener("input", () => refresh());
    layerSelect.addEventListener("change", () => refresh.flush());
    headSelect.addEventListener("change", () => refresh.flush());
    tokens.addEventListener("keydown", (event) => {
      const step = { ArrowLeft: -1, ArrowRight: 1, Home: -Infinity, End: Infinity }[event.key];
      if (step === undefined || !answer) return;
      event.preventDefault();
      const n = answer.prompt_tokens.length;
      const from = query === null ? n - 1 : query;
      choose(Math.max(0, Math.min(n - 1, from + step)), { focus: true });
    });
    // Nothing is asked until the panel scrolls into view (each answer costs the engine forward passes).
    const seen = whenShown($("attention"), () => refresh.flush());
    document.addEventListener("playground:refresh", () => {
      if (seen()) refresh.flush();
    });
  }

  document.addEventListener("DOMContentLoaded", setupAttention);
})();
