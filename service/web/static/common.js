// genai-service playground: what every panel shares (HTTP with readable errors, SSE over fetch, bars, tokens).
//
// Loaded first; the panels' scripts (app.js and one file per view) read these from `window.Playground`.
// Errors always come back as {"error": {"message", "type", "param", "code"}}; `api()` turns them into
// ApiError with a readable message. No library, no build step.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------------------------------
  // HTTP helpers
  // ---------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(message, status, body) {
      super(message);
      this.name = "ApiError";
      this.status = status;
      this.body = body;
    }
  }

  const KEY_STORAGE = "genai-service.api-key";

  function authHeaders() {
    const key = ($("api-key-input").value || "").trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function describeError(status, body, fallback) {
    const err = body && typeof body === "object" ? body.error : null;
    let message = err && err.message ? String(err.message) : fallback || `HTTP ${status}`;
    if (err && Array.isArray(err.details) && err.details.length > 1) {
      message += "\n" + err.details.map((d) => `• ${d.field}: ${d.message}`).join("\n");
    }
    if (status === 503) message = `The service is not ready: ${message}`;
    else if (status === 429) message = `The service is busy, try again in a moment: ${message}`;
    else if (status === 401) message = `${message} (set the API key at the top of the page)`;
    return message;
  }

  async function readError(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      /* not JSON: keep the status line */
    }
    return new ApiError(describeError(response.status, body, `${response.status} ${response.statusText}`.trim()), response.status, body);
  }

  /** POST a JSON body; resolve to the response when it is 2xx, else throw ApiError with a readable message. */
  async function post(path, body, accept, signal) {
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: accept, ...authHeaders() },
        body: JSON.stringify(body),
        signal,
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError("Cannot reach the service. Is it still running?", 0, null);
    }
    if (!response.ok) throw await readError(response);
    return response;
  }

  /** POST a JSON body; resolve to the parsed JSON answer. */
  async function api(path, body, { signal } = {}) {
    return (await post(path, body, "application/json", signal)).json();
  }

  /**
   * POST a JSON body and read the answer as Server-Sent Events, calling onEvent(name, data) per event.
   * (EventSource cannot POST, so this parses the stream from fetch: blocks separated by a blank line,
   * `event:` and `data:` lines, `:` comments are keep-alive pings.)
   */
  async function streamEvents(path, body, onEvent, { signal } = {}) {
    const response = await post(path, body, "text/event-stream", signal);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const dispatch = (block) => {
      let name = "message";
      const data = [];
      for (const line of block.split(/\r\n|\r|\n/)) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") name = value;
        else if (field === "data") data.push(value);
      }
      if (!data.length) return;
      let parsed;
      try {
        parsed = JSON.parse(data.join("\n"));
      } catch (_) {
        parsed = data.join("\n");
      }
      onEvent(name, parsed);
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const blocks = buffer.split(/\r\n\r\n|\n\n|\r\r/);
      buffer = blocks.pop();
      blocks.forEach(dispatch);
    }
    buffer += decoder.decode();
    if (buffer.trim()) dispatch(buffer);
  }

  function debounce(fn, ms) {
    let timer = null;
    const debounced = (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
    debounced.flush = (...args) => {
      clearTimeout(timer);
      fn(...args);
    };
    debounced.cancel = () => clearTimeout(timer);
    return debounced;
  }

  /** Run `task(signal)` so that only the latest call's result counts: a newer call aborts the older one. */
  function latestOnly(task) {
    let controller = null;
    const run = async (...args) => {
      if (controller) controller.abort();
      const mine = new AbortController();
      controller = mine;
      try {
        return await task(mine.signal, ...args);
      } catch (err) {
        if (err.name !== "AbortError") throw err;
        return undefined;
      } finally {
        if (controller === mine) controller = null;
      }
    };
    run.cancel = () => {
      if (controller) controller.abort();
    };
    return run;
  }

  /**
   * Load a panel's data only once the panel is on screen: `load()` runs the first time any part of `panel`
   * scrolls into view (at once in a browser without IntersectionObserver), so the page asks for nothing it
   * does not show. Returns `seen()`, true from then on: handlers that redo a load (playground:refresh) check
   * it, so that they never ask for a panel nobody has looked at yet.
   */
  function whenShown(panel, load) {
    let seen = false;
    const start = () => {
      if (seen) return;
      seen = true;
      load();
    };
    if (typeof IntersectionObserver === "undefined") {
      start();
    } else {
      const observer = new IntersectionObserver((entries) => {
        if (!entries.some((entry) => entry.isIntersecting)) return;
        observer.disconnect();
        start();
      });
      observer.observe(panel);
    }
    return () => seen;
  }

  /** Mark `el` aria-busy (dimmed by the CSS) while any of the promises handed to the result is pending. */
  function busyWhile(el) {
    let pending = 0;
    el.setAttribute("aria-busy", "false");
    return async (promise) => {
      pending += 1;
      el.setAttribute("aria-busy", "true");
      try {
        return await promise;
      } finally {
        pending -= 1;
        if (pending === 0) el.setAttribute("aria-busy", "false");
      }
    };
  }

  function showError(el, err) {
    if (!err) {
      el.hidden = true;
      el.textContent = "";
      return;
    }
    el.textContent = err instanceof ApiError ? err.message : `Something went wrong: ${err.message || err}`;
    el.hidden = false;
  }

  const pct = (p) => {
    const v = p * 100;
    if (v >= 99.95) return "100%";
    if (v >= 0.1) return `${v.toFixed(1)}%`;
    return v > 0 ? "<0.1%" : "0%";
  };

  /** Token text with invisible characters made visible: spaces as ·, newlines as ↵, tabs as →. */
  function visibleToken(text, container) {
    container.textContent = "";
    if (text === "") {
      const empty = document.createElement("span");
      empty.className = "ws";
      empty.textContent = "∅";
      container.append(empty);
      return;
    }
    const parts = text.split(/( +|\n|\t)/);
    for (const part of parts) {
      if (!part) continue;
      if (/^ +$/.test(part) || part === "\n" || part === "\t") {
        const ws = document.createElement("span");
        ws.className = "ws";
        ws.textContent = part === "\n" ? "↵" : part === "\t" ? "→" : "·".repeat(part.length);
        container.append(ws);
      } else {
        container.append(document.createTextNode(part));
      }
    }
  }

  /** A row of a bar chart: label, bar, percentage. */
  function barRow(labelNode, probability, { top = false } = {}) {
    const row = document.createElement("div");
    row.className = "bar-row" + (top ? " top" : "");
    const label = document.createElement("span");
    label.className = "bar-label";
    label.append(labelNode);
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${Math.max(0, Math.min(1, probability)) * 100}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = pct(probability);
    row.append(label, track, value);
    return row;
  }

  /** A colour scale from 0 (first stop) to 1 (last stop), as the CSS legends draw it. */
  function scale(stops) {
    return (t) => {
      const x = Math.max(0, Math.min(1, Number.isFinite(t) ? t : 0)) * (stops.length - 1);
      const i = Math.min(stops.length - 2, Math.floor(x));
      const f = x - i;
      const [h0, s0, l0] = stops[i];
      const [h1, s1, l1] = stops[i + 1];
      const mix = (a, b) => a + (b - a) * f;
      return `hsl(${mix(h0, h1).toFixed(0)} ${mix(s0, s1).toFixed(0)}% ${mix(l0, l1).toFixed(0)}%)`;
    };
  }

  /** An element with a class and text, the one-liner every view needs. */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  window.Playground = Object.freeze({
    $, el, ApiError, KEY_STORAGE, authHeaders, describeError, post, api, streamEvents,
    debounce, latestOnly, whenShown, busyWhile, showError, pct, visibleToken, barRow, scale,
  });
})();
