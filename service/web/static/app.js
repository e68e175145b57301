// genai-service playground: a plain-JavaScript client of the service's public endpoints.
//
//   POST /classify-digit      {"image": "<base64 PNG>"}                 -> the digit and ten probabilities
//   POST /tokenize            {"text": "..."}                           -> ids, tokens, offsets, count
//   POST /next-token-probs    {"prompt": "...", "top_k": 10}            -> candidates with probabilities
//
// The other panels have a file each (generation.js, bpe.js, sampler.js, lens.js, attention.js, tree.js,
// digit-why.js), all on the helpers of common.js. Errors always come back as {"error": {"message", "type",
// "param", "code"}}; `api()` turns them into ApiError, and each panel shows the message. No library, no build step.
"use strict";

(() => {
  const {
    $, ApiError, KEY_STORAGE, authHeaders, api, debounce, latestOnly, busyWhile, showError, pct, visibleToken, barRow,
  } = window.Playground;

  // ---------------------------------------------------------------------------------------
  // Service status
  // ---------------------------------------------------------------------------------------

  let waitedForService = false;

  async function checkService() {
    const pill = $("service-status");
    try {
      const ready = await fetch("/ready", { headers: authHeaders() });
      const info = await fetch("/info", { headers: authHeaders() }).then((r) => (r.ok ? r.json() : null)).catch(() => null);
      const lm = info && info.language_model ? info.language_model : null;
      const lmName = lm ? lm.model_id || lm.name || lm.id || "" : "";
      if (ready.ok) {
        pill.dataset.state = "ready";
        pill.textContent = lmName ? `Ready · ${lmName}` : "Ready";
        if (waitedForService) document.dispatchEvent(new Event("playground:refresh")); // redo what failed while loading
        waitedForService = false;
      } else {
        pill.dataset.state = "loading";
        pill.textContent = "Loading models…";
        waitedForService = true;
        setTimeout(checkService, 2000);
      }
      if (info && info.service) {
        const versions = info.service.versions || {};
        $("footer-info").textContent = `genai-service ${versions["genai-service"] || ""}` + (lmName ? ` · language model ${lmName}` : "");
      }
      if (info && info.limits) {
        document.dispatchEvent(new CustomEvent("playground:limits", { detail: info.limits }));
        if (info.limits.max_top_k) $("nt-topk").max = info.limits.max_top_k;
        if (info.limits.max_new_tokens) $("gen-max").max = info.limits.max_new_tokens;
      }
    } catch (_) {
      pill.dataset.state = "error";
      pill.textContent = "Service unreachable";
      waitedForService = true;
      setTimeout(checkService, 4000);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Digit pad
  // ---------------------------------------------------------------------------------------

  function setupDigits() {
    const canvas = $("digit-canvas");
    const ctx = canvas.getContext("2d");
    const drop = $("digit-drop");
    const placeholder = $("digit-placeholder");
    const bars = $("digit-bars");
    const prediction = $("digit-prediction");
    const confidence = $("digit-confidence");
    const preparedCanvas = $("digit-prepared");
    const preparedCtx = preparedCanvas.getContext("2d");
    const errorEl = $("digit-error");
    const BRUSH = canvas.width / 14; // MNIST strokes are about 2 of the digit's 20 pixels
    let blank = true;
    let drawing = null; // {id, x, y}

    const barItems = [];
    for (let d = 0; d < 10; d++) {
      const li = document.createElement("li");
      li.dataset.digit = String(d);
      li.append(barRow(document.createTextNode(String(d)), 0));
      bars.append(li);
      barItems.push(li);
    }

    function paintBackground() {
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
    }

    function resetResult() {
      prediction.textContent = "?";
      preparedCtx.fillStyle = "#000";
      preparedCtx.fillRect(0, 0, 28, 28);
      delete prediction.dataset.digit;
      confidence.textContent = "";
      barItems.forEach((li) => {
        li.firstChild.classList.remove("top");
        li.querySelector(".bar-fill").style.width = "0%";
        li.querySelector(".bar-value").textContent = "0%";
      });
    }

    function clear() {
      classify.cancel();
      send.cancel();
      paintBackground();
      blank = true;
      placeholder.hidden = false;
      resetResult();
      showError(errorEl, null);
      document.dispatchEvent(new Event("playground:digit-cleared"));
    }

    /** Pull the probabilities out of the answer (one image in, one prediction out). */
    function readPrediction(answer) {
      let p = answer;
      if (Array.isArray(p.predictions)) p = p.predictions[0];
      else if (Array.isArray(p.results)) p = p.results[0];
      let probs = p.probabilities ?? p.probs ?? p.scores;
      if (probs && !Array.isArray(probs) && typeof probs === "object") {
        probs = Array.from({ length: 10 }, (_, d) => Number(probs[d] ?? probs[String(d)] ?? 0));
      }
      const digit = p.digit ?? p.label ?? p.prediction ?? (probs ? probs.indexOf(Math.max(...probs)) : null);
      return { digit: Number(digit), probs: probs || null, prepared: p.prepared || null };
    }

    /** Draw the 28x28 input the model saw (0..255, ink high), so people see what MNIST preparation did. */
    function showPrepared(rows) {
      if (!Array.isArray(rows) || rows.length !== 28) return;
      const img = preparedCtx.createImageData(28, 28);
      rows.forEach((row, y) =>
        row.forEach((v, x) => {
          const i = (y * 28 + x) * 4;
          img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
          img.data[i + 3] = 255;
        }),
      );
      preparedCtx.putImageData(img, 0, 0);
    }

    function showPrediction({ digit, probs, prepared }) {
      showPrepared(prepared);
      prediction.textContent = String(digit);
      prediction.dataset.digit = String(digit);
      confidence.textContent = probs ? `${pct(probs[digit])} sure` : "";
      barItems.forEach((li, d) => {
        const p = probs ? probs[d] : d === digit ? 1 : 0;
        li.firstChild.classList.toggle("top", d === digit);
        li.querySelector(".bar-fill").style.width = `${p * 100}%`;
        li.querySelector(".bar-value").textContent = pct(p);
      });
    }

    const send = latestOnly(async (signal, base64Png) => {
      const answer = await api("/classify-digit", { image: base64Png, include_prepared: true }, { signal });
      if (signal.aborted) return;
      const predicted = readPrediction(answer);
      showPrediction(predicted);
      showError(errorEl, null);
      // the "Why that digit" panel (digit-why.js) explains the same picture
      document.dispatchEvent(new CustomEvent("playground:digit-classified", { detail: { image: base64Png, digit: predicted.digit } }));
    });

    // aria-busy on the result while a prediction is due or on its way (tests and screen readers wait on it).
    const result = bars.closest(".digit-result");
    let inFlight = 0;
    const updateBusy = () => result.setAttribute("aria-busy", String(inFlight > 0 || pending !== null));

    async function classifyNow(base64Png) {
      inFlight += 1;
      updateBusy();
      try {
        await send(base64Png);
      } catch (err) {
        showError(errorEl, err);
      } finally {
        inFlight -= 1;
        updateBusy();
      }
    }

    const canvasPng = () => canvas.toDataURL("image/png").split(",", 2)[1];
    let pending = null;
    const classify = {
      // While drawing: at most one request every 200 ms, and one when the stroke ends.
      soon() {
        if (pending) return;
        pending = setTimeout(() => {
          pending = null;
          if (!blank) classifyNow(canvasPng());
          updateBusy();
        }, 200);
        updateBusy();
      },
      now() {
        this.cancel();
        if (!blank) classifyNow(canvasPng());
      },
      cancel() {
        clearTimeout(pending);
        pending = null;
        updateBusy();
      },
    };

    function point(event) {
      const rect = canvas.getBoundingClientRect();
      return {
        x: ((event.clientX - rect.left) / rect.width) * canvas.width,
        y: ((event.clientY - rect.top) / rect.height) * canvas.height,
      };
    }

    function dot(p) {
      ctx.fillStyle = "#fff";
      ctx.beginPath();
      ctx.arc(p.x, p.y, BRUSH / 2, 0, 2 * Math.PI);
      ctx.fill();
    }

    function stroke(from, to) {
      ctx.strokeStyle = "#fff";
      ctx.fillStyle = "#fff";
      ctx.lineWidth = BRUSH;
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
      ctx.beginPath();
      ctx.moveTo(from.x, from.y);
      ctx.lineTo(to.x, to.y);
      ctx.stroke();
    }

    canvas.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      const p = point(event);
      drawing = { id: event.pointerId, ...p };
      dot(p); // a tap is a dot (a zero-length line would draw nothing)
      blank = false;
      placeholder.hidden = true;
      classify.soon();
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!drawing || event.pointerId !== drawing.id) return;
      const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
      for (const e of events.length ? events : [event]) {
        const p = point(e);
        stroke(drawing, p);
        drawing.x = p.x;
        drawing.y = p.y;
      }
      classify.soon();
    });
    const endStroke = (event) => {
      if (!drawing || event.pointerId !== drawing.id) return;
      drawing = null;
      classify.now();
    };
    canvas.addEventListener("pointerup", endStroke);
    canvas.addEventListener("pointercancel", endStroke);

    $("digit-clear").addEventListener("click", clear);

    // Dropped or chosen images: shown on the pad, and sent as they are (the server prepares them like MNIST).
    async function useFile(file) {
      if (!file) return;
      if (!file.type.startsWith("image/")) {
        showError(errorEl, new ApiError(`“${file.name}” is not an image.`, 0, null));
        return;
      }
      const dataUrl = await new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result);
        reader.onerror = () => reject(reader.error);
        reader.readAsDataURL(file);
      });
      const img = new Image();
      img.onload = () => {
        paintBackground();
        const scale = Math.min(canvas.width / img.width, canvas.height / img.height);
        const w = img.width * scale;
        const h = img.height * scale;
        ctx.drawImage(img, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
      };
      img.src = dataUrl;
      blank = false;
      placeholder.hidden = true;
      classify.cancel();
      classifyNow(String(dataUrl).split(",", 2)[1]);
    }
    $("digit-file").addEventListener("change", (event) => {
      useFile(event.target.files[0]);
      event.target.value = "";
    });
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("dragover");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("dragover"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("dragover");
      useFile(event.dataTransfer.files[0]);
    });

    clear();
  }

  // ---------------------------------------------------------------------------------------
  // Tokenizer
  // ---------------------------------------------------------------------------------------

  function setupTokenizer() {
    const text = $("tok-text");
    const special = $("tok-special");
    const showIds = $("tok-show-ids");
    const chips = $("tok-chips");
    const count = $("tok-count");
    const chars = $("tok-chars");
    const errorEl = $("tok-error");

    const run = latestOnly(async (signal) => {
      const value = text.value;
      const answer = await api("/tokenize", { text: value, add_special_tokens: special.checked }, { signal });
      if (signal.aborted) return;
      chips.textContent = "";
      answer.tokens.forEach((token, i) => {
        const chip = document.createElement("span");
        const offset = answer.offsets && answer.offsets[i];
        const isSpecial = offset && offset[0] === offset[1] && token !== "";
        chip.className = `chip c${i % 8}` + (isSpecial ? " special" : "");
        chip.title = `id ${answer.ids[i]}` + (offset ? ` · characters ${offset[0]}–${offset[1]}` : "") + ` · ${JSON.stringify(token)}`;
        chip.dataset.id = String(answer.ids[i]);
        const body = document.createElement("span");
        body.className = "chip-text";
        visibleToken(token, body);
        const id = document.createElement("span");
        id.className = "chip-id";
        id.textContent = String(answer.ids[i]);
        chip.append(body, id);
        chips.append(chip);
      });
      count.textContent = String(answer.count);
      chars.textContent = String([...value].length);
      showError(errorEl, null);
    });

    const busy = busyWhile(chips);
    const refresh = debounce(() => busy(run()).catch((err) => showError(errorEl, err)), 250);
    text.addEventListener("input", () => refresh());
    special.addEventListener("change", () => refresh.flush());
    document.addEventListener("playground:refresh", () => refresh.flush());
    showIds.addEventListener("change", () => chips.classList.toggle("show-ids", showIds.checked));
    refresh.flush();
  }

  // ---------------------------------------------------------------------------------------
  // Next token, one step at a time
  // ---------------------------------------------------------------------------------------

  function setupNextToken() {
    const prompt = $("nt-prompt");
    const topk = $("nt-topk");
    const temp = $("nt-temp");
    const list = $("nt-candidates");
    const info = $("nt-info");
    const undo = $("nt-undo");
    const errorEl = $("nt-error");
    const history = [];

    const run = latestOnly(async (signal) => {
      if (!prompt.value) {
        list.textContent = "";
        info.textContent = "Type a prompt to see what the model expects next.";
        showError(errorEl, null);
        return;
      }
      const body = { prompt: prompt.value, top_k: Number(topk.value) || 10 };
      const t = Number(temp.value);
      if (temp.value !== "" && t !== 1) body.temperature = t;
      const answer = await api("/next-token-probs", body, { signal });
      if (signal.aborted) return;
      // Keyboard users who picked a candidate stay in the list: the new first candidate takes the focus.
      const hadFocus = list.contains(document.activeElement);
      list.textContent = "";
      const covered = answer.candidates.reduce((sum, c) => sum + c.probability, 0);
      answer.candidates.forEach((c, i) => {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "candidate";
        button.dataset.token = c.token;
        button.title = `id ${c.id} · probability ${c.probability.toFixed(4)} · log-probability ${c.logprob.toFixed(3)} — click to append`;
        const tok = document.createElement("span");
        tok.className = "tok";
        visibleToken(c.token, tok);
        const row = barRow(document.createTextNode(""), c.probability, { top: i === 0 });
        const track = row.querySelector(".bar-track");
        const value = row.querySelector(".bar-value");
        button.append(tok, track, value);
        button.setAttribute("aria-label", `Append ${JSON.stringify(c.token)}, probability ${pct(c.probability)}`);
        button.addEventListener("click", () => append(c.token));
        li.append(button);
        list.append(li);
      });
      if (hadFocus && list.firstElementChild) list.firstElementChild.firstElementChild.focus();
      info.innerHTML = "";
      const strong = document.createElement("strong");
      strong.textContent = String(answer.prompt_tokens);
      info.append(strong, ` prompt tokens · the top ${answer.candidates.length} cover ${pct(covered)} of the probability`);
      showError(errorEl, null);
    });

    const busy = busyWhile(list);
    const refresh = debounce(() => busy(run()).catch((err) => showError(errorEl, err)), 350);

    function append(token) {
      history.push(prompt.value);
      undo.disabled = false;
      prompt.value += token;
      refresh.flush();
    }

    undo.addEventListener("click", () => {
      if (!history.length) return;
      prompt.value = history.pop();
      undo.disabled = history.length === 0;
      refresh.flush();
    });
    prompt.addEventListener("input", () => refresh());
    topk.addEventListener("change", () => refresh.flush());
    temp.addEventListener("change", () => refresh.flush());
    $("nt-refresh").addEventListener("click", () => refresh.flush());
    document.addEventListener("playground:refresh", () => refresh.flush());
    refresh.flush();
  }

  // ---------------------------------------------------------------------------------------

  function setupApiKey() {
    const input = $("api-key-input");
    try {
      input.value = sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (_) {
      /* storage blocked: the key lives in the field only */
    }
    input.addEventListener("change", () => {
      try {
        sessionStorage.setItem(KEY_STORAGE, input.value.trim());
      } catch (_) {
        /* ignore */
      }
      document.dispatchEvent(new Event("playground:refresh")); // the live panels ask again with the new key
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupApiKey();
    checkService();
    setupDigits();
    setupTokenizer();
    setupNextToken();
  });
})();
