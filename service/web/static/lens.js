// Logit lens: what each layer would predict if the model stopped there.
//
//   POST /tokenize          {"text": prompt}                                   -> count (to ask for every position)
//   POST /inspect/logit-lens {"prompt", "top_k", "positions": [...]}          -> positions[]: {position, token, final_token,
//                                                                                layers[]: {layer, top[{id, token, probability}],
//                                                                                           entropy, final_token_rank}}
//
// A grid: one row per lens layer (the output at the top, the embeddings at the bottom), one column per prompt
// position, each cell that layer's top token shaded by its probability; cells that already agree with the
// model's final answer are ringed. Activating a cell lists its top k.
"use strict";

(() => {
  const { $, el, api, debounce, latestOnly, whenShown, busyWhile, showError, pct, visibleToken, barRow } = window.Playground;

  const MAX_POSITIONS = 16; // columns shown: the last ones (a phone scrolls the grid sideways, the page stays put)

  /** Background for a probability: the accent, from faint to full. */
  const shade = (p) => `rgba(99, 102, 241, ${(0.06 + 0.84 * Math.max(0, Math.min(1, p))).toFixed(3)})`;

  function setupLens() {
    const prompt = $("lens-prompt");
    const topk = $("lens-topk");
    const grid = $("lens-grid");
    const info = $("lens-info");
    const detail = $("lens-detail");
    const errorEl = $("lens-error");
    let selected = null; // {position, layer} kept across answers for the same prompt

    function showCell(button, row, cell, layers) {
      grid.querySelectorAll(".lens-cell.selected").forEach((b) => b.classList.remove("selected"));
      button.classList.add("selected");
      selected = { position: row.position, layer: cell.layer };
      detail.textContent = "";
      const title = el("h3");
      const where = cell.layer === 0 ? "the embeddings" : cell.layer === layers ? `layer ${cell.layer} (the output)` : `after layer ${cell.layer}`;
      const tok = el("span", "tok");
      visibleToken(row.token, tok);
      title.append(`Position ${row.position}, after `, tok, `, read at ${where}`);
      detail.append(title);
      const list = el("ol", "bars lens-top");
      list.setAttribute("aria-label", "Top tokens of this cell");
      cell.top.forEach((t) => {
        const li = el("li");
        li.dataset.token = t.token;
        const label = el("span");
        visibleToken(t.token, label);
        li.append(barRow(label, t.probability, { top: t.id === row.final_token.id }));
        list.append(li);
      });
      detail.append(list);
      const note = el("p", "hint");
      note.textContent =
        `Entropy ${cell.entropy.toFixed(2)} nats · the model's final answer ${JSON.stringify(row.final_token.token)} ` +
        `is ranked ${cell.final_token_rank} here` + (cell.final_token_rank === 1 ? " (green)" : "");
      detail.append(note);
      detail.hidden = false;
    }

    function render(answer, promptTokens) {
      const hadFocus = grid.contains(document.activeElement);
      grid.textContent = "";
      const rows = answer.positions;
      const layerIds = rows[0].layers.map((c) => c.layer);
      const table = el("table", "lens-table");
      const caption = el("caption", "visually-hidden", "Top next token by layer (rows) and prompt position (columns)");
      table.append(caption);
      const head = el("thead");
      const headRow = el("tr");
      headRow.append(el("th", "lens-corner", "layer"));
      rows.forEach((row) => {
        const th = el("th", "lens-pos");
        th.scope = "col";
        const tok = el("span", "tok");
        visibleToken(row.token, tok);
        th.append(tok);
        th.title = `position ${row.position}: the cells below predict the token after this one`;
        headRow.append(th);
      });
      head.append(headRow);
      table.append(head);
      const body = el("tbody");
      [...layerIds].reverse().forEach((layer, r) => {
        const tr = el("tr");
        const th = el("th", "lens-layer", layer === 0 ? "emb" : String(layer));
        th.scope = "row";
        th.title = layer === 0 ? "layer 0: the token embeddings" : layer === answer.layers ? `layer ${layer}: the model's output` : `after decoder layer ${layer}`;
        tr.append(th);
        rows.forEach((row) => {
          const cell = row.layers[layerIds.length - 1 - r];
          const top = cell.top[0];
          const td = el("td");
          const button = el("button", "lens-cell" + (cell.final_token_rank === 1 ? " final" : ""));
          button.type = "button";
          button.dataset.layer = String(cell.layer);
          button.dataset.position = String(row.position);
          button.dataset.token = top.token;
          button.style.backgroundColor = shade(top.probability);
          if (top.probability > 0.55) button.classList.add("strong");
          visibleToken(top.token, button);
          button.title = `${JSON.stringify(top.token)} ${pct(top.probability)} · layer ${cell.layer}, position ${row.position}`;
          button.setAttribute("aria-label", `Layer ${cell.layer}, position ${row.position}: ${JSON.stringify(top.token)} ${pct(top.probability)}`);
          button.addEventListener("click", () => showCell(button, row, cell, answer.layers));
          td.append(button);
          tr.append(td);
        });
        body.append(tr);
      });
      table.append(body);
      // Arrow keys move between cells (Tab would stop at every one of them).
      table.addEventListener("keydown", (event) => {
        const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
        const move = moves[event.key];
        const cell = event.target.closest(".lens-cell");
        if (!move || !cell) return;
        const td = cell.parentElement;
        const tr = td.parentElement;
        const targetRow = body.rows[tr.sectionRowIndex + move[0]];
        const target = targetRow && targetRow.cells[td.cellIndex + move[1]];
        const next = target && target.querySelector(".lens-cell");
        if (next) {
          event.preventDefault();
          next.focus();
        }
      });
      const scroller = el("div", "lens-scroll");
      scroller.tabIndex = 0;
      scroller.setAttribute("aria-label", "Logit lens grid (scrolls sideways)");
      scroller.append(table);
      grid.append(scroller);

      info.textContent = "";
      info.append(el("strong", null, String(layerIds.length)), ` layers × `, el("strong", null, String(rows.length)), " positions");
      if (promptTokens > rows.length) info.append(` (the last ${rows.length} of ${promptTokens})`);
      info.append(` · ${answer.forward} forward pass`);

      const again = selected && grid.querySelector(`.lens-cell[data-layer="${selected.layer}"][data-position="${selected.position}"]`);
      if (again) again.click();
      else {
        detail.hidden = true;
        selected = null;
      }
      if (hadFocus) (again || grid.querySelector(".lens-cell")).focus();
    }

    const run = latestOnly(async (signal) => {
      const text = prompt.value;
      if (!text) {
        grid.textContent = "";
        detail.hidden = true;
        info.textContent = "Type a prompt to look inside the model.";
        showError(errorEl, null);
        return;
      }
      const k = Math.max(1, Math.min(20, Math.round(Number(topk.value)) || 5));
      const { count } = await api("/tokenize", { text }, { signal });
      if (signal.aborted) return;
      const shown = Math.min(count, MAX_POSITIONS);
      const positions = Array.from({ length: shown }, (_, i) => count - shown + i);
      const answer = await api("/inspect/logit-lens", { prompt: text, top_k: k, positions }, { signal });
      if (signal.aborted) return;
      if (grid.dataset.prompt !== text) selected = null;
      grid.dataset.prompt = text; // which prompt the grid shows
      render(answer, count);
      showError(errorEl, null);
    });

    const busy = busyWhile(grid);
    const refresh = debounce(() => busy(run()).catch((err) => showError(errorEl, err)), 400);
    prompt.addEventListener("input", () => refresh());
    topk.addEventListener("change", () => refresh.flush());
    // Nothing is asked until the panel scrolls into view (each answer costs the engine forward passes).
    const seen = whenShown($("lens"), () => refresh.flush());
    document.addEventListener("playground:refresh", () => {
      if (seen()) refresh.flush();
    });
  }

  document.addEventListener("DOMContentLoaded", setupLens);
})();
