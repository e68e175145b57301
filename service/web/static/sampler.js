// Sampler: how temperature, top-k, top-p and the repetition penalty reshape the next-token distribution.
//
//   POST /next-token-probs {"prompt", "top_k": <tokens listed>, "explain": true,
//                           "temperature", "sample_top_k", "top_p", "repetition_penalty"}
//     -> stages[]: {name, kept, removed_mass, top[{id, token, probability}]}, model first, the last sampled from
//
// Sliders ask again as they move (debounced, the newest answer wins); the chart (stages.js) opens on the
// last stage, the one /generate would draw from with these settings, with the cut-off drawn on its bars.
"use strict";

(() => {
  const { $, api, debounce, latestOnly, busyWhile, showError, el } = window.Playground;

  const DEFAULTS = { temperature: "1", topk: "0", topp: "1", rep: "1" };

  function setupSampler() {
    const prompt = $("smp-prompt");
    const temp = $("smp-temp");
    const topk = $("smp-topk");
    const topp = $("smp-topp");
    const rep = $("smp-rep");
    const chart = $("smp-chart");
    const info = $("smp-info");
    const errorEl = $("smp-error");
    let listed = 20; // tokens listed per stage: /info's max_top_alternatives caps it
    let shownStage = null; // the stage picked by hand, kept while the sliders move

    const outputs = [
      [temp, $("smp-temp-value"), (v) => Number(v).toFixed(2)],
      [topk, $("smp-topk-value"), (v) => (Number(v) === 0 ? "off" : v)],
      [topp, $("smp-topp-value"), (v) => (Number(v) >= 1 ? "off" : Number(v).toFixed(2))],
      [rep, $("smp-rep-value"), (v) => (Number(v) === 1 ? "off" : Number(v).toFixed(2))],
    ];
    const showValues = () => outputs.forEach(([input, output, format]) => (output.textContent = format(input.value)));

    const run = latestOnly(async (signal) => {
      const text = prompt.value;
      if (!text) {
        chart.textContent = "";
        info.textContent = "Type a prompt to see its next-token distribution.";
        showError(errorEl, null);
        return;
      }
      const body = {
        prompt: text,
        top_k: listed,
        explain: true,
        temperature: Number(temp.value),
        sample_top_k: Number(topk.value),
        top_p: Number(topp.value),
        repetition_penalty: Number(rep.value),
      };
      const answer = await api("/next-token-probs", body, { signal });
      if (signal.aborted) return;
      // which request the chart shows (tests and scripts can wait on these)
      Object.assign(chart.dataset, {
        prompt: text, temperature: String(body.temperature), sampleTopK: String(body.sample_top_k),
        topP: String(body.top_p), repetitionPenalty: String(body.repetition_penalty),
      });
      const stages = answer.stages;
      chart.textContent = "";
      chart.append(window.PlaygroundStages.stageChart(stages, { selected: shownStage, onSelect: (name) => (shownStage = name) }));
      const last = stages[stages.length - 1];
      info.textContent = "";
      info.append(
        el("strong", null, String(stages.length)), ` step${stages.length === 1 ? "" : "s"} · /generate would draw from `,
        el("strong", null, window.PlaygroundStages.label(last.name)), `: ${last.kept.toLocaleString("en-US")} token${last.kept === 1 ? "" : "s"} kept`,
      );
      showError(errorEl, null);
    });

    const busy = busyWhile(chart);
    const refresh = debounce(() => busy(run()).catch((err) => showError(errorEl, err)), 250);
    [temp, topk, topp, rep].forEach((input) =>
      input.addEventListener("input", () => {
        shownStage = null; // a moved slider shows its effect: the last stage
        showValues();
        refresh();
      }),
    );
    prompt.addEventListener("input", () => refresh());
    $("smp-reset").addEventListener("click", () => {
      temp.value = DEFAULTS.temperature;
      topk.value = DEFAULTS.topk;
      topp.value = DEFAULTS.topp;
      rep.value = DEFAULTS.rep;
      shownStage = null;
      showValues();
      refresh.flush();
    });
    document.addEventListener("playground:refresh", () => refresh.flush());
    document.addEventListener("playground:limits", (event) => {
      const max = event.detail.max_top_alternatives;
      if (max && max < listed) {
        listed = max;
        refresh.flush();
      }
    });
    showValues();
    refresh.flush();
  }

  document.addEventListener("DOMContentLoaded", setupSampler);
})();
