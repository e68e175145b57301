// The sampler's stages as a chart: shared by the Sampler panel and the Generation panel's token inspector.
//
// A stage is {name: model|repetition_penalty|temperature|top_k|top_p, kept, removed_mass, top[{id, token,
// probability}]} as /next-token-probs (with "explain") and /generate (each step's explain.stages) return it;
// the last stage is the distribution the token is drawn from. The chart shows one stage at a time (a row
// of stage buttons picks it, the last one first): its tokens as bars, a ghost of the stage before behind
// each bar, and, after a top-k or top-p cut, the tokens cut greyed below a line that marks the cut-off.
"use strict";

(() => {
  const { el, pct, visibleToken } = window.Playground;

  const LABELS = { model: "model", repetition_penalty: "repetition penalty", temperature: "temperature", top_k: "top-k", top_p: "top-p" };
  const CUTS = new Set(["top_k", "top_p"]);

  const label = (name) => LABELS[name] || name;
  const count = (n) => n.toLocaleString("en-US");

  function describe(stage) {
    const moved = pct(stage.removed_mass);
    switch (stage.name) {
      case "model":
        return `The model's own distribution (softmax of its logits) over ${count(stage.kept)} tokens.`;
      case "repetition_penalty":
        return `The repetition penalty lowers tokens already in the text: ${moved} of the probability moves to others.`;
      case "temperature":
        return `Temperature sharpens (below 1) or flattens (above 1) the distribution: ${moved} of the probability moves.`;
      case "top_k":
        return `Top-k keeps only the k likeliest tokens: ${count(stage.kept)} kept, ${moved} of the probability cut, the rest scaled up to 100%.`;
      case "top_p":
        return `Top-p keeps the likeliest tokens until they add up to p: ${count(stage.kept)} kept, ${moved} of the probability cut, the rest scaled up to 100%.`;
      default:
        return "";
    }
  }

  /** Rows of stage `s`: its listed tokens (kept), then the tokens an earlier top-k or top-p cut removed. */
  function rowsOf(stages, s) {
    const kept = stages[s].top.map((t) => ({ ...t, kept: true }));
    const seen = new Set(kept.map((t) => t.id));
    const removed = [];
    for (let c = 1; c <= s; c++) {
      if (!CUTS.has(stages[c].name)) continue;
      const after = new Set(stages[c].top.map((t) => t.id));
      for (const t of stages[c - 1].top) {
        if (after.has(t.id) || seen.has(t.id)) continue;
        seen.add(t.id);
        removed.push({ ...t, probability: 0, kept: false, cutBy: stages[c].name, before: t.probability });
      }
    }
    return { kept, removed };
  }

  function barItem(row, ghost, chosenId) {
    const li = el("li", "stage-bar" + (row.kept ? "" : " removed") + (row.id === chosenId ? " chosen" : ""));
    li.dataset.token = row.token;
    li.dataset.id = String(row.id);
    li.dataset.kept = String(row.kept);
    li.dataset.probability = String(row.probability);
    const tok = el("span", "tok");
    visibleToken(row.token, tok);
    const track = el("span", "bar-track");
    if (ghost !== undefined) {
      const shadow = el("span", "bar-ghost");
      shadow.style.width = `${Math.max(0, Math.min(1, ghost)) * 100}%`;
      track.append(shadow);
    }
    const fill = el("span", "bar-fill");
    fill.style.width = `${Math.max(0, Math.min(1, row.probability)) * 100}%`;
    track.append(fill);
    const value = el("span", "bar-value", row.kept ? pct(row.probability) : "cut");
    li.append(tok, track, value);
    li.title = row.kept
      ? `${JSON.stringify(row.token)}: ${pct(row.probability)}` + (ghost !== undefined ? ` (before this step ${pct(ghost)})` : "")
      : `${JSON.stringify(row.token)}: cut by ${label(row.cutBy)} (it had ${pct(row.before)})`;
    return li;
  }

  /**
   * The chart of `stages`; `options.selected` names the stage shown first (default the last), `options.chosenId`
   * marks the token drawn, `options.draw` ({greedy, u, rank}) says how, `options.onSelect(name)` hears picks.
   */
  function stageChart(stages, options = {}) {
    const root = el("div", "stage-chart");
    const steps = el("div", "stage-steps");
    steps.setAttribute("role", "group");
    steps.setAttribute("aria-label", "Sampler steps, in order: pick one to see the distribution after it");
    const summary = el("p", "stage-summary");
    const bars = el("ol", "bars stage-bars");
    bars.setAttribute("aria-label", "Next-token probabilities after the chosen step");
    root.append(steps, summary, bars);
    let selected = Math.max(0, stages.findIndex((s) => s.name === options.selected));
    if (!stages.some((s) => s.name === options.selected)) selected = stages.length - 1;

    const buttons = stages.map((stage, i) => {
      const button = el("button", "stage-step");
      button.type = "button";
      button.dataset.stage = stage.name;
      const name = el("span", "stage-name", `${i + 1}. ${label(stage.name)}`);
      const change = stage.removed_mass > 0 ? ` · ${pct(stage.removed_mass)} ${CUTS.has(stage.name) ? "cut" : "moved"}` : "";
      const detail = el("span", "stage-detail", `${count(stage.kept)} kept${change}`);
      button.append(name, detail);
      button.addEventListener("click", () => show(i, true));
      if (i > 0) steps.append(el("span", "stage-arrow", "→"));
      steps.append(button);
      return button;
    });

    function show(s, picked) {
      selected = s;
      root.dataset.stage = stages[s].name;
      buttons.forEach((b, i) => {
        b.setAttribute("aria-pressed", String(i === s));
        b.classList.toggle("last", i === stages.length - 1);
      });
      const stage = stages[s];
      summary.textContent = describe(stage);
      if (s === stages.length - 1 && stages.length > 1) summary.append(" ", el("strong", null, "The token is drawn from this one."));
      if (s === stages.length - 1 && options.draw) {
        const d = options.draw;
        const chosen = stage.top[d.rank];
        const what = chosen ? JSON.stringify(chosen.token) : `rank ${d.rank}`;
        summary.append(
          " ",
          d.greedy
            ? `Greedy: the likeliest, ${what}.`
            : `Drawn with u = ${d.u.toFixed(3)}: adding up the probabilities down the list, the total first passes u at ${what} (rank ${d.rank}).`,
        );
      }
      const before = s > 0 ? new Map(stages[s - 1].top.map((t) => [t.id, t.probability])) : new Map();
      const { kept, removed } = rowsOf(stages, s);
      bars.textContent = "";
      kept.forEach((row) => bars.append(barItem(row, before.get(row.id), options.chosenId)));
      if (stage.kept > kept.length) {
        const more = el("li", "stage-more", `… and ${count(stage.kept - kept.length)} more tokens kept, each less likely`);
        const drawnBelow = options.draw && s === stages.length - 1 && !kept.some((row) => row.id === options.chosenId);
        if (drawnBelow) {
          more.classList.add("chosen");
          more.append(`, among them the one drawn (rank ${options.draw.rank})`);
        }
        bars.append(more);
      }
      if (removed.length) {
        const cuts = [...new Set(removed.map((r) => label(r.cutBy)))].join(" and ");
        const line = el("li", "stage-cutoff");
        line.append(el("span", null, `cut-off: ${cuts} keep${cuts.includes(" and ") ? "" : "s"} ${count(stage.kept)} token${stage.kept === 1 ? "" : "s"}`));
        bars.append(line);
        removed.forEach((row) => bars.append(barItem(row, before.get(row.id), options.chosenId)));
      }
      if (picked && options.onSelect) options.onSelect(stage.name);
    }

    show(selected, false);
    return root;
  }

  window.PlaygroundStages = Object.freeze({ stageChart, label });
})();
