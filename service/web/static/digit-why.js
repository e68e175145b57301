// Why that digit: what the digit classifier saw in the picture on the pad.
//
//   POST /classify-digit {"image": "<base64 PNG>", "explain": true}
//     -> explain: {digit, input 28x28, saliency, logit_saliency (28x28 each), logit, output_bias,
//                  all_units_contribution, top_units[{unit, activation, contribution, weights 28x28}],
//                  neighbours[{index, label, distance, image 28x28}], reference_set}
//   GET /inspect/digits/weights -> {layer_sizes, activation, units[{unit, weights 28x28, bias, outgoing_weights}]}
//
// The pad (app.js) announces each picture it classified; this panel asks for its explanation once the
// drawing pauses, and draws the saliency over the input, the units that added most to the digit's logit
// (their incoming weights as images), and the nearest training digits. Every unit's weights load on demand.
"use strict";

(() => {
  const { $, el, api, authHeaders, describeError, ApiError, debounce, latestOnly, showError, pct } = window.Playground;

  const SIDE = 28;
  const DARK = [16, 19, 28]; // the canvases' zero: near black, in light and dark mode alike
  const POSITIVE = [249, 115, 22]; // orange-red: raises the digit's logit
  const NEGATIVE = [59, 130, 246]; // blue: lowers it

  const mix = (a, b, t) => a.map((v, i) => Math.round(v + (b[i] - v) * t));
  const maxAbs = (rows) => rows.reduce((m, row) => row.reduce((n, v) => Math.max(n, Math.abs(v)), m), 0) || 1;

  /** Paint a 28x28 canvas pixel by pixel: `colour(x, y)` -> [r, g, b]. */
  function paint(canvas, colour) {
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(SIDE, SIDE);
    for (let y = 0; y < SIDE; y++) {
      for (let x = 0; x < SIDE; x++) {
        const [r, g, b] = colour(x, y);
        const i = (y * SIDE + x) * 4;
        image.data[i] = r;
        image.data[i + 1] = g;
        image.data[i + 2] = b;
        image.data[i + 3] = 255;
      }
    }
    ctx.putImageData(image, 0, 0);
  }

  /** A diverging image (weights, gradients): blue below zero, orange above, scaled by the largest |value|. */
  function diverging(canvas, rows) {
    const scale = maxAbs(rows);
    paint(canvas, (x, y) => {
      const t = rows[y][x] / scale;
      return mix(DARK, t >= 0 ? POSITIVE : NEGATIVE, Math.min(1, Math.abs(t)));
    });
  }

  /** A digit as MNIST stores it, 0..255 ink. */
  function greyscale(canvas, rows) {
    paint(canvas, (x, y) => {
      const v = rows[y][x] / 255;
      return mix(DARK, [255, 255, 255], v);
    });
  }

  /** The input dimmed, with the saliency over it: the stronger the gradient, the more its colour shows. */
  function saliencyOver(canvas, input, saliency) {
    const scale = maxAbs(saliency);
    paint(canvas, (x, y) => {
      const base = mix(DARK, [255, 255, 255], (input[y][x] / 255) * 0.6);
      const t = saliency[y][x] / scale;
      return mix(base, t >= 0 ? POSITIVE : NEGATIVE, Math.min(1, Math.abs(t) ** 1.3)); // faint gradients stay faint
    });
  }

  function smallCanvas(label) {
    const canvas = el("canvas", "why-image");
    canvas.width = SIDE;
    canvas.height = SIDE;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", label);
    return canvas;
  }

  const signed = (v) => `${v >= 0 ? "+" : "−"}${Math.abs(v).toFixed(2)}`;

  function setupDigitWhy() {
    const body = $("why-body");
    const info = $("why-info");
    const saliencyCanvas = $("why-saliency");
    const saliencyKind = $("why-saliency-kind");
    const units = $("why-units");
    const unitsTitle = $("why-units-title");
    const unitsSum = $("why-units-sum");
    const neighbours = $("why-neighbours");
    const allUnits = $("why-all");
    const allGrid = $("why-all-units");
    const errorEl = $("why-error");
    let current = null; // the explanation shown
    let weightsLoaded = false;
    // Busy from the moment the pad announces a picture until its explanation is shown (tests wait on it).
    let announced = null;
    let explained = null;
    let inFlight = 0;
    const updateBusy = () => body.setAttribute("aria-busy", String(inFlight > 0 || announced !== explained));

    function drawSaliency() {
      if (!current) return;
      const kind = saliencyKind.value;
      saliencyOver(saliencyCanvas, current.input, kind === "probability" ? current.saliency : current.logit_saliency);
      saliencyCanvas.dataset.kind = kind;
      saliencyCanvas.setAttribute(
        "aria-label",
        `Your digit, with where more ink would raise (orange) or lower (blue) the ${kind === "probability" ? "probability" : "logit"} of ${current.digit}`,
      );
    }

    function markTopUnits() {
      if (!current) return;
      const top = new Set(current.top_units.map((u) => u.unit));
      allGrid.querySelectorAll(".why-unit").forEach((item) => item.classList.toggle("top", top.has(Number(item.dataset.unit))));
    }

    function render(explanation, confidence) {
      current = explanation;
      body.dataset.digit = String(explanation.digit);
      info.textContent = "";
      info.append("Why a ", el("strong", null, String(explanation.digit)), confidence !== undefined ? ` (${pct(confidence)} sure)` : "", ": the pieces of the answer.");
      drawSaliency();

      unitsTitle.textContent = `Hidden units that added most to the ${explanation.digit}`;
      units.textContent = "";
      explanation.top_units.forEach((u) => {
        const li = el("li", "why-unit");
        li.dataset.unit = String(u.unit);
        li.dataset.contribution = String(u.contribution);
        const canvas = smallCanvas(`Unit ${u.unit}'s incoming weights`);
        diverging(canvas, u.weights);
        const caption = el("span", "why-caption");
        caption.append(el("strong", null, `#${u.unit}`), el("span", "why-number", signed(u.contribution)));
        li.title = `unit ${u.unit}: activation ${u.activation.toFixed(3)}, adds ${signed(u.contribution)} to the logit of ${explanation.digit}`;
        li.append(canvas, caption);
        units.append(li);
      });
      const shownSum = explanation.top_units.reduce((s, u) => s + u.contribution, 0);
      unitsSum.textContent =
        `These ${explanation.top_units.length} add ${signed(shownSum)}; all units together ${signed(explanation.all_units_contribution)}, ` +
        `plus the output bias ${signed(explanation.output_bias)}: the logit ${explanation.logit.toFixed(2)}.`;

      neighbours.textContent = "";
      explanation.neighbours.forEach((n) => {
        const li = el("li", "why-neighbour" + (n.label === explanation.digit ? " same" : ""));
        li.dataset.label = String(n.label);
        li.dataset.index = String(n.index);
        const canvas = smallCanvas(`A training ${n.label}`);
        greyscale(canvas, n.image);
        const caption = el("span", "why-caption");
        caption.append(el("strong", null, String(n.label)), el("span", "why-number", n.distance.toFixed(2)));
        li.title = `training digit #${n.index}, a ${n.label}, at distance ${n.distance.toFixed(3)} in the last hidden layer`;
        li.append(canvas, caption);
        neighbours.append(li);
      });
      markTopUnits();
      body.hidden = false;
    }

    function reset() {
      run.cancel();
      announced = explained = null;
      updateBusy();
      current = null;
      body.hidden = true;
      delete body.dataset.digit;
      info.textContent = "Draw a digit on the pad (or drop an image there) to see why the classifier reads it as it does.";
      showError(errorEl, null);
      markTopUnits();
    }

    const run = latestOnly(async (signal, image) => {
      const answer = await api("/classify-digit", { image, explain: true }, { signal });
      if (signal.aborted) return;
      render(answer.explain, answer.confidence);
      explained = image;
      showError(errorEl, null);
    });

    const explain = debounce(async (image) => {
      inFlight += 1;
      updateBusy();
      try {
        await run(image);
      } catch (err) {
        explained = image; // shown as an error: nothing more is due for this picture
        showError(errorEl, err);
      } finally {
        inFlight -= 1;
        updateBusy();
      }
    }, 350);
    document.addEventListener("playground:digit-classified", (event) => {
      announced = event.detail.image;
      updateBusy();
      explain(event.detail.image);
    });
    document.addEventListener("playground:digit-cleared", () => {
      explain.cancel();
      reset();
    });
    saliencyKind.addEventListener("change", drawSaliency);

    // Every unit's weights: 1.7 MB, so only when asked for.
    allUnits.addEventListener("toggle", async () => {
      if (!allUnits.open || weightsLoaded) return;
      weightsLoaded = true;
      allGrid.setAttribute("aria-busy", "true");
      try {
        const response = await fetch("/inspect/digits/weights", { headers: authHeaders() });
        let answer = null;
        try {
          answer = await response.json();
        } catch (_) {
          /* not JSON: the status says enough */
        }
        if (!response.ok) throw new ApiError(describeError(response.status, answer, `${response.status} ${response.statusText}`), response.status, answer);
        allGrid.textContent = "";
        answer.units.forEach((u) => {
          const item = el("li", "why-unit");
          item.dataset.unit = String(u.unit);
          const canvas = smallCanvas(`Unit ${u.unit}'s incoming weights`);
          diverging(canvas, u.weights);
          item.title = `unit ${u.unit}, bias ${u.bias.toFixed(3)}`;
          item.append(canvas);
          allGrid.append(item);
        });
        $("why-all-count").textContent = String(answer.units.length);
        markTopUnits();
        showError(errorEl, null);
      } catch (err) {
        weightsLoaded = false;
        showError(errorEl, err);
      } finally {
        allGrid.setAttribute("aria-busy", "false");
      }
    });
    reset();
  }

  document.addEventListener("DOMContentLoaded", setupDigitWhy);
})();
