// Continuation tree: the likeliest next tokens, and the likeliest after each of those, a few steps deep.
//
//   POST /inspect/tree {"prompt", "depth", "branching"}
//     -> children[]: {id, token, probability, logprob, cumulative_logprob, children[]}, leaves[] (likeliest first)
//
// Each node is a <details> (opened with a click, Enter or Space): its token, its probability given the
// path above it, and a bar; the likeliest path starts open.
"use strict";

(() => {
  const { $, el, api, debounce, latestOnly, whenShown, busyWhile, showError, pct, visibleToken } = window.Playground;

  function nodeRow(node) {
    const row = el("span", "tree-row");
    const tok = el("span", "tok");
    visibleToken(node.token, tok);
    const track = el("span", "bar-track");
    const fill = el("span", "bar-fill");
    fill.style.width = `${Math.max(0, Math.min(1, node.probability)) * 100}%`;
    track.append(fill);
    row.append(tok, track, el("span", "bar-value", pct(node.probability)));
    return row;
  }

  /** A node and, below it, its children (likeliest first); `open` opens it and its likeliest child, down. */
  function nodeView(node, depth, open) {
    const li = el("li", "tree-node");
    li.dataset.token = node.token;
    li.dataset.probability = String(node.probability);
    li.dataset.depth = String(depth);
    const path = `path probability ${pct(Math.exp(node.cumulative_logprob))}`;
    if (!node.children.length) {
      li.classList.add("leaf");
      const row = nodeRow(node);
      row.title = `${JSON.stringify(node.token)} · ${pct(node.probability)} after the path above · ${path}`;
      li.append(row);
      return li;
    }
    const details = el("details");
    details.open = open;
    const summary = el("summary");
    summary.append(nodeRow(node));
    summary.title = `${JSON.stringify(node.token)} · ${pct(node.probability)} after the path above · ${path}`;
    details.append(summary);
    const list = el("ul", "tree-children");
    node.children.forEach((child, i) => list.append(nodeView(child, depth + 1, open && i === 0)));
    details.append(list);
    li.append(details);
    return li;
  }

  function setupTree() {
    const prompt = $("tree-prompt");
    const depth = $("tree-depth");
    const branching = $("tree-branching");
    const view = $("tree-view");
    const info = $("tree-info");
    const leaves = $("tree-leaves");
    const errorEl = $("tree-error");

    const run = latestOnly(async (signal) => {
      const text = prompt.value;
      if (!text) {
        view.textContent = "";
        leaves.textContent = "";
        info.textContent = "Type a prompt to grow its tree.";
        showError(errorEl, null);
        return;
      }
      const body = { prompt: text, depth: Math.round(Number(depth.value)) || 3, branching: Math.round(Number(branching.value)) || 3 };
      const answer = await api("/inspect/tree", body, { signal });
      if (signal.aborted) return;
      view.textContent = "";
      view.dataset.prompt = text; // which request the tree shows
      view.dataset.depth = String(body.depth);
      view.dataset.branching = String(body.branching);
      const root = el("div", "tree-root");
      const rootText = el("span", "tree-prompt");
      rootText.textContent = text.length > 60 ? `…${text.slice(-60)}` : text;
      root.append(rootText);
      const list = el("ul", "tree-children top");
      list.setAttribute("aria-label", "Continuations of the prompt");
      answer.children.forEach((child, i) => list.append(nodeView(child, 1, i === 0)));
      view.append(root, list);
      info.textContent = "";
      info.append(el("strong", null, String(answer.nodes)), ` nodes · ${answer.leaves.length} paths of ${body.depth} tokens`);

      leaves.textContent = "";
      answer.leaves.slice(0, 5).forEach((leaf) => {
        const li = el("li");
        const tok = el("span", "tok");
        visibleToken(leaf.text, tok);
        li.append(tok, el("span", "bar-value", pct(Math.exp(leaf.logprob))));
        leaves.append(li);
      });
      showError(errorEl, null);
    });

    const busy = busyWhile(view);
    const refresh = debounce(() => busy(run()).catch((err) => showError(errorEl, err)), 400);
    prompt.addEventListener("input", () => refresh());
    depth.addEventListener("change", () => refresh.flush());
    branching.addEventListener("change", () => refresh.flush());
    $("tree-expand").addEventListener("click", () => view.querySelectorAll("details").forEach((d) => (d.open = true)));
    $("tree-collapse").addEventListener("click", () => view.querySelectorAll("details").forEach((d) => (d.open = false)));
    // Nothing is asked until the panel scrolls into view (each answer costs the engine forward passes).
    const seen = whenShown($("tree"), () => refresh.flush());
    document.addEventListener("playground:refresh", () => {
      if (seen()) refresh.flush();
    });
  }

  document.addEventListener("DOMContentLoaded", setupTree);
})();
