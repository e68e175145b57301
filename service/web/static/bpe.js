// BPE merges, step by step: how the tokenizer builds a word's tokens.
//
//   POST /tokenize {"text": "...", "explain": true}
//     -> explain.pieces[]: {text, special, byte_level, initial[], merges[{rank, left, right, merged, symbols[]}],
//                           whole_word, tokens[], ids[]}
//
// Each piece is shown as its starting symbols (one per byte-level character), then one row per merge: the
// merge's rank, the pair it joined, and the symbols after it, the new symbol highlighted.
"use strict";

(() => {
  const { $, el, api, debounce, latestOnly, busyWhile, showError, visibleToken } = window.Playground;

  /** One row of symbols; those equal to `merged` (the merge just applied) are highlighted. */
  function symbolRow(symbols, merged) {
    const row = el("span", "bpe-symbols");
    symbols.forEach((symbol) => {
      const chip = el("span", "bpe-symbol" + (merged !== null && symbol === merged ? " merged" : ""), symbol);
      row.append(chip);
    });
    return row;
  }

  function step(label, symbols, merged, detail) {
    const li = el("li", "bpe-step");
    const head = el("span", "bpe-step-label");
    head.append(label);
    li.append(head, symbolRow(symbols, merged));
    if (detail) li.append(el("span", "bpe-step-detail", detail));
    return li;
  }

  function pieceView(piece, index) {
    const box = el("article", "bpe-piece");
    box.dataset.piece = String(index);
    const title = el("h3", "bpe-piece-title");
    const text = el("span", "tok");
    visibleToken(piece.text, text);
    title.append("Piece ", String(index + 1), ": ", text);
    if (piece.byte_level !== piece.text) title.append(el("span", "bpe-byte-level", ` spelt ${piece.byte_level}`));
    box.append(title);

    const steps = el("ol", "bpe-steps");
    steps.setAttribute("aria-label", `Merges of piece ${index + 1}`);
    if (piece.special) {
      steps.append(step("added token", piece.tokens, null, "taken whole: no merges"));
    } else {
      steps.append(step("start", piece.initial, null, `${piece.initial.length} symbol${piece.initial.length === 1 ? "" : "s"}`));
      piece.merges.forEach((merge, i) => {
        const li = step(`${i + 1}.`, merge.symbols, merge.merged, null);
        li.classList.add("merge");
        li.dataset.rank = String(merge.rank);
        const rule = el("span", "bpe-rule");
        rule.append(el("code", null, merge.left), " + ", el("code", null, merge.right), " → ", el("code", "merged", merge.merged));
        const rank = el("span", "bpe-rank", `rank ${merge.rank}`);
        rank.title = "The merge's place in the tokenizer's list: the lowest-ranked pair of neighbours is merged first.";
        li.insertBefore(rule, li.children[1]);
        li.append(rank);
        steps.append(li);
      });
      if (piece.whole_word) steps.append(step("whole", piece.tokens, null, "in the vocabulary as a whole: merges skipped"));
    }
    box.append(steps);

    const result = el("p", "bpe-result");
    result.append(piece.tokens.length === 1 ? "Token: " : "Tokens: ");
    piece.tokens.forEach((token, i) => {
      const chip = el("span", "bpe-symbol final", token);
      chip.title = `id ${piece.ids[i]}`;
      chip.dataset.id = String(piece.ids[i]);
      result.append(chip, el("span", "bpe-id", `#${piece.ids[i]}`));
    });
    box.append(result);
    return box;
  }

  function setupBpe() {
    const input = $("bpe-text");
    const pieces = $("bpe-pieces");
    const info = $("bpe-info");
    const errorEl = $("bpe-error");

    const run = latestOnly(async (signal) => {
      if (!input.value) {
        pieces.textContent = "";
        info.textContent = "Type a word to see its merges.";
        showError(errorEl, null);
        return;
      }
      const text = input.value;
      const answer = await api("/tokenize", { text, explain: true }, { signal });
      if (signal.aborted) return;
      pieces.dataset.text = text; // which text the steps shown belong to
      const explanation = answer.explain;
      pieces.textContent = "";
      explanation.pieces.forEach((piece, i) => pieces.append(pieceView(piece, i)));
      const merges = explanation.pieces.reduce((n, p) => n + p.merges.length, 0);
      info.textContent = "";
      const strong = el("strong", null, String(merges));
      info.append(
        strong,
        ` merge${merges === 1 ? "" : "s"} · ${explanation.pieces.length} piece${explanation.pieces.length === 1 ? "" : "s"} · ${answer.count} token${answer.count === 1 ? "" : "s"}`,
      );
      if (explanation.byte_level) info.append(" · byte-level spelling: Ġ is a space, Ċ a newline");
      showError(errorEl, null);
    });

    const busy = busyWhile(pieces);
    const refresh = debounce(() => busy(run()).catch((err) => showError(errorEl, err)), 300);
    input.addEventListener("input", () => refresh());
    document.addEventListener("playground:refresh", () => refresh.flush());
    refresh.flush();
  }

  document.addEventListener("DOMContentLoaded", setupBpe);
})();
