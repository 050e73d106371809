// fedrouter admin page: polls the admin API every 5 s and renders it. Every string from the
// server reaches the page as a text node or textContent, never parsed as markup.
"use strict";

(() => {
  const KEY_STORAGE = "fedrouter.adminKey";
  const REFRESH_MS = 5000;
  const API = "admin/v1/"; // relative, so the page also works behind a path prefix

  const state = { key: sessionStorage.getItem(KEY_STORAGE), tenant: "", paused: false, timer: 0, busy: false };
  const $ = (id) => document.getElementById(id);

  // ---- DOM helpers -------------------------------------------------------------------------

  /** el("td", {className: "num", title: "x"}, "text", childNode) — children become text nodes. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value !== undefined && value !== null) node[name] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function badge(text, kind, title) {
    return el("span", { className: "badge " + (kind || ""), title }, text);
  }

  function fillBody(table, rows, columns, emptyText) {
    const body = $(table).tBodies[0];
    if (rows.length === 0) {
      body.replaceChildren(el("tr", {}, el("td", { className: "empty", colSpan: columns }, emptyText)));
    } else {
      body.replaceChildren(...rows);
    }
  }

  // ---- Formatting --------------------------------------------------------------------------

  const intFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const dash = "—";

  const fmtInt = (v) => (isNum(v) ? intFmt.format(v) : dash);
  const fmtMs = (v) => (isNum(v) ? (v >= 10000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms") : dash);
  const fmtSecondsAsMs = (v) => (isNum(v) ? fmtMs(v * 1000) : dash);
  const fmtRate = (v) => (isNum(v) ? v.toFixed(v >= 100 ? 0 : 1) : dash);
  const fmtPct = (v) => (isNum(v) ? (v * 100).toFixed(v >= 0.1 ? 0 : 1) + "%" : dash);

  function fmtSmall(v, unit) {
    if (!isNum(v)) return dash;
    if (v === 0) return unit + "0";
    const digits = Math.abs(v) >= 100 ? 2 : Math.abs(v) >= 1 ? 3 : Math.abs(v) >= 0.001 ? 5 : 7;
    return unit + v.toFixed(digits);
  }
  const fmtUsd = (v) => fmtSmall(v, "$");
  const fmtPrice = (v) => (isNum(v) ? "$" + (v === 0 || v >= 0.01 ? v.toFixed(2) : String(v)) : dash);
  const fmtWh = (v) => fmtSmall(v, "");

  function fmtTime(ts) {
    if (!isNum(ts)) return dash;
    const d = new Date(ts * 1000);
    const sameDay = d.toDateString() === new Date().toDateString();
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
    return sameDay ? time : d.toLocaleDateString() + " " + time;
  }

  // ---- API ---------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function getJSON(path) {
    let response;
    try {
      response = await fetch(API + path, {
        headers: { Authorization: "Bearer " + state.key, Accept: "application/json" },
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, "The gateway is unreachable (" + err.message + ").");
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error && typeof body.error.message === "string" ? body.error.message : "";
      throw new ApiError(response.status, message || "HTTP " + response.status + " from " + path);
    }
    return body;
  }

  // ---- Rendering ---------------------------------------------------------------------------

  function renderTotals(totals) {
    const tiles = [
      ["Requests", fmtInt(totals.requests)],
      ["Input tokens", fmtInt(totals.input_tokens)],
      ["Output tokens", fmtInt(totals.output_tokens)],
      ["Cost", fmtUsd(totals.cost_usd)],
      ["Energy (Wh)", fmtWh(totals.energy_wh)],
    ];
    $("totals").replaceChildren(
      ...tiles.map(([label, value]) => el("div", { className: "tile" },
        el("div", { className: "label" }, label), el("div", { className: "value" }, value))),
    );
    $("totals-scope").textContent = state.tenant ? "tenant " + state.tenant : "all tenants";
  }

  function health(stats) {
    if (stats.ejected) {
      const left = isNum(stats.ejected_for_s) ? Math.ceil(stats.ejected_for_s) + " s left" : "";
      return badge("ejected", "bad", "Ejected by the circuit breaker" + (left ? "; " + left : ""));
    }
    if (isNum(stats.error_rate) && stats.error_rate >= 0.05) return badge("degraded", "warn", "Error rate ≥ 5%");
    return badge("up", "up");
  }

  function errorCell(rate) {
    const className = "num" + (!isNum(rate) ? "" : rate >= 0.2 ? " err-hi" : rate >= 0.05 ? " err-mid" : "");
    return el("td", { className }, fmtPct(rate));
  }

  function prices(backend) {
    const models = Array.isArray(backend.models) ? backend.models : [];
    const table = backend.prices || {};
    return models.map((model) => {
      const p = table[model];
      const cost = p ? " " + fmtPrice(p.input) + " · " + fmtPrice(p.output) : "";
      return el("span", { className: "price" }, model, el("span", { className: "mono" }, cost));
    });
  }

  function renderBackends(list) {
    let ejected = 0;
    const rows = list.map((b) => {
      const s = b.stats || {};
      if (s.ejected) ejected += 1;
      return el("tr", {},
        el("td", {}, el("strong", {}, b.name), el("span", { className: "sub" }, b.type)),
        el("td", {}, badge(b.class, b.class)),
        el("td", {}, b.zone || dash),
        el("td", {}, health(s), s.ejected && isNum(s.ejected_for_s)
          ? el("span", { className: "sub" }, "back in " + Math.ceil(s.ejected_for_s) + " s") : null),
        el("td", { className: "num" }, fmtSecondsAsMs(s.ttft_s)),
        el("td", { className: "num" }, fmtRate(s.tokens_per_s)),
        errorCell(s.error_rate),
        el("td", { className: "num" }, fmtInt(s.inflight)),
        el("td", { className: "num" }, fmtInt(s.requests)),
        el("td", { className: "num" }, fmtInt(s.failures)),
        el("td", { className: "num" }, isNum(b.joules_per_token) ? String(b.joules_per_token) : dash),
        el("td", { className: "wrap" }, ...prices(b)),
      );
    });
    fillBody("backends", rows, 12, "No backends configured.");
    $("backends-summary").textContent =
      list.length + " backends · " + (list.length - ejected) + " up" + (ejected ? " · " + ejected + " ejected" : "");
  }

  function weightBars(weights) {
    const w = weights || {};
    const parts = ["latency", "price", "energy"].map((name) => {
      const v = isNum(w[name]) ? w[name] : 0;
      const fill = el("span", { className: "fill" });
      fill.style.width = Math.max(0, Math.min(1, v)) * 100 + "%";
      return el("span", { className: "bar", title: name + " weight " + v },
        el("span", { className: "track" }, fill), v.toFixed(2));
    });
    return el("span", { className: "bars" }, ...parts);
  }

  function renderTenants(list) {
    const rows = list.map((t) => {
      const u = t.usage || {};
      const row = el("tr", { tabIndex: 0, title: "Show recent requests of " + t.name },
        el("td", {}, el("strong", {}, t.name)),
        el("td", {}, t.allow_volunteer ? badge("allowed", "volunteer") : badge("no")),
        el("td", {}, weightBars(t.weights)),
        el("td", { className: "num" }, fmtInt(u.requests)),
        el("td", { className: "num" }, fmtInt(u.input_tokens)),
        el("td", { className: "num" }, fmtInt(u.output_tokens)),
        el("td", { className: "num" }, fmtUsd(u.cost_usd)),
        el("td", { className: "num" }, fmtWh(u.energy_wh)),
      );
      if (t.name === state.tenant) row.classList.add("selected");
      const pick = () => setTenant(state.tenant === t.name ? "" : t.name);
      row.addEventListener("click", pick);
      row.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          pick();
        }
      });
      return row;
    });
    fillBody("tenants", rows, 8, "No tenants configured.");
    syncTenantFilter(list.map((t) => t.name));
  }

  function syncTenantFilter(names) {
    const select = $("tenant-filter");
    const current = Array.from(select.options, (o) => o.value).slice(1);
    if (current.join("\n") !== names.join("\n")) {
      select.replaceChildren(el("option", { value: "" }, "All tenants"),
        ...names.map((n) => el("option", { value: n }, n)));
    }
    select.value = state.tenant;
  }

  function outcomeBadge(outcome) {
    const kind = outcome === "ok" ? "ok" : outcome === "client_disconnected" || outcome === "cancelled" ? "warn" : "bad";
    return badge(outcome || "unknown", kind);
  }

  function renderRecent(list) {
    const rows = list.map((r) => {
      const id = String(r.request_id || "");
      const when = isNum(r.ts) ? new Date(r.ts * 1000).toISOString() : "";
      const counted = r.tokens_source === "counted";
      return el("tr", {},
        el("td", { title: when },
          fmtTime(r.ts), el("span", { className: "sub mono", title: id }, id.length > 16 ? id.slice(0, 16) + "…" : id)),
        el("td", {}, r.tenant),
        el("td", {}, r.model, el("span", { className: "sub" }, r.endpoint + (r.stream ? " · stream" : ""))),
        el("td", {}, r.backend, " ", badge(r.backend_class, r.backend_class),
          el("span", { className: "sub" }, r.zone || dash)),
        el("td", { className: "num", title: counted ? "Counted by the gateway" : "Reported by the backend" },
          fmtInt(r.input_tokens) + " → " + fmtInt(r.output_tokens),
          el("span", { className: "sub" }, counted ? "counted" : "reported")),
        el("td", { className: "num" }, fmtMs(r.latency_ms)),
        el("td", { className: "num" }, fmtMs(r.ttft_ms)),
        el("td", { className: "num" }, fmtUsd(r.cost_usd)),
        el("td", { className: "num" }, fmtWh(r.energy_wh)),
        el("td", { className: "num" }, fmtInt(r.attempts)),
        el("td", {}, outcomeBadge(r.outcome)),
      );
    });
    fillBody("recent", rows, 11, "No requests yet" + (state.tenant ? " for " + state.tenant : "") + ".");
  }

  // ---- Session and refresh loop ------------------------------------------------------------

  function showError(message) {
    const banner = $("error");
    banner.textContent = message || "";
    banner.hidden = !message;
  }

  function setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.className = "status " + (kind || "");
  }

  function showLogin(message) {
    clearTimeout(state.timer);
    state.key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    $("dashboard").hidden = true;
    $("session").hidden = true;
    $("login").hidden = false;
    showError(message);
    $("key").value = "";
    $("key").focus();
  }

  function schedule() {
    clearTimeout(state.timer);
    if (!state.paused && state.key) state.timer = setTimeout(refresh, REFRESH_MS);
  }

  async function refresh() {
    if (!state.key || state.busy) return;
    if (document.hidden) {
      schedule();
      return;
    }
    state.busy = true;
    const query = "usage?limit=" + encodeURIComponent($("limit").value)
      + (state.tenant ? "&tenant=" + encodeURIComponent(state.tenant) : "");
    try {
      const [backends, tenants, usage] = await Promise.all([getJSON("backends"), getJSON("tenants"), getJSON(query)]);
      renderBackends(backends.data || []);
      renderTenants(tenants.data || []);
      renderTotals(usage.totals || {});
      renderRecent(usage.recent || []);
      $("dashboard").hidden = false;
      showError("");
      setStatus("Updated " + fmtTime(Date.now() / 1000), state.paused ? "paused" : "");
    } catch (err) {
      if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
        state.busy = false;
        showLogin(err.message);
        return;
      }
      if (err instanceof ApiError && err.status === 400 && state.tenant) state.tenant = "";
      showError(err.message);
      setStatus("Refresh failed at " + fmtTime(Date.now() / 1000), "failing");
    } finally {
      state.busy = false;
    }
    schedule();
  }

  function setTenant(name) {
    state.tenant = name;
    for (const row of $("tenants").tBodies[0].rows) {
      row.classList.toggle("selected", row.cells[0].textContent === name && name !== "");
    }
    $("tenant-filter").value = name;
    refresh();
  }

  function start() {
    $("login").hidden = true;
    $("session").hidden = false;
    setStatus("Loading…", "");
    refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const key = $("key").value.trim();
      if (!key) return;
      state.key = key;
      sessionStorage.setItem(KEY_STORAGE, key);
      showError("");
      start();
    });
    $("forget").addEventListener("click", () => showLogin(""));
    $("refresh").addEventListener("click", () => refresh());
    $("pause").addEventListener("click", () => {
      state.paused = !state.paused;
      $("pause").textContent = state.paused ? "Resume" : "Pause";
      setStatus(state.paused ? "Paused" : "Resuming…", state.paused ? "paused" : "");
      if (state.paused) clearTimeout(state.timer);
      else refresh();
    });
    $("tenant-filter").addEventListener("change", (e) => setTenant(e.target.value));
    $("limit").addEventListener("change", () => refresh());
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.key && !state.paused) refresh();
    });
    if (state.key) start();
    else showLogin("");
  });
})();
