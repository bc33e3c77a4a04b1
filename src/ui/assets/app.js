// mqtt-ha-gateway web console: plain JavaScript, no framework, no build.
// Everything shown is set with textContent: nothing from a message is ever
// read as HTML.
"use strict";

const state = { csrf: null, source: null, tab: "live", statusTimer: null };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(path, options = {}) {
  const headers = { "Accept": "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if ((options.method || "GET") !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const r = await fetch("/ui/api/" + path, {
    method: options.method || "GET",
    headers,
    credentials: "same-origin",
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  if (r.status === 401) { showLogin(); throw new Error("login required"); }
  const body = r.status === 204 ? {} : await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function time(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function badge(outcome) {
  const kind = outcome === "ok" ? "ok" : outcome === "no_route" ? "none" : "err";
  return el("span", { class: "badge " + kind, "data-outcome": outcome, text: outcome === "no_route" ? "no route" : outcome });
}

function pretty(v) {
  return typeof v === "string" ? v : JSON.stringify(v, null, 2);
}

// ---- login
function showLogin() {
  document.getElementById("app").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("password").focus();
}

document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const error = document.getElementById("login-error");
  error.textContent = "";
  try {
    const r = await fetch("/ui/api/login", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ password: document.getElementById("password").value }),
    });
    const body = await r.json();
    if (!r.ok) { error.textContent = body.error; return; }
    state.csrf = body.csrf;
    document.getElementById("password").value = "";
    start(true);
  } catch (e) { error.textContent = String(e.message || e); }
});

document.getElementById("logout").addEventListener("click", async () => {
  try { await api("logout", { method: "POST" }); } catch (_) { /* shown by the login form */ }
  state.csrf = null;
  if (state.source) state.source.close();
  showLogin();
});

// ---- tabs
for (const b of document.querySelectorAll("#tabs button")) {
  b.addEventListener("click", () => selectTab(b.dataset.tab));
}

function selectTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll("#tabs button")) b.setAttribute("aria-selected", String(b.dataset.tab === tab));
  for (const p of document.querySelectorAll("[data-panel]")) p.hidden = p.dataset.panel !== tab;
  if (tab === "status") refreshStatus();
  if (tab === "dead") refreshDead();
  if (tab === "config") refreshConfig();
  history.replaceState(null, "", "#" + tab);
}

// ---- live view
const MAX_ROWS = 500;

function entryView(e) {
  const matched = e.matched.kind === "route" ? "route “" + e.matched.name + "”"
    : e.matched.kind === "no_route" ? "no route" : "command topic";
  const call = e.call ? e.call.service + (e.call.data && e.call.data.entity_id ? " → " + [].concat(e.call.data.entity_id).join(", ") : "")
    : (e.service || "");
  const facts = [
    ["received", new Date(e.at).toLocaleString()],
    ["matched", matched],
    ["outcome", e.outcome + (e.detail ? " — " + e.detail : "")],
    ["HA status", e.status ?? "—"],
    ["duration", e.duration_ms + " ms"],
    ["attempts", e.attempts + (e.retries ? " (" + e.retries + " retries)" : "")],
  ];
  if (e.changed.length) facts.push(["changed in HA", e.changed.map((c) => c.entity_id + " → " + c.state).join(", ")]);
  return el("li", { "data-id": e.id, "data-topic": e.topic },
    el("details", { class: "entry" },
      el("summary", {},
        el("span", { class: "mono muted", text: time(e.at) }),
        el("span", { class: "topic", text: e.topic }),
        el("span", { class: "what", text: matched + (call ? " · " + call : "") }),
        badge(e.outcome)),
      el("div", { class: "body" },
        el("dl", { class: "kv" }, facts.map(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })])),
        el("div", { class: "muted", text: "payload (" + e.size + " bytes" + (e.truncated ? ", cut" : "") + ")" }),
        el("pre", { text: e.payload }),
        e.call ? [el("div", { class: "muted", text: "service call" }), el("pre", { text: pretty(e.call) })] : null)));
}

function filterQuery() {
  const f = new FormData(document.getElementById("filters"));
  const q = new URLSearchParams();
  for (const k of ["topic", "entity", "outcome"]) if (f.get(k)) q.set(k, f.get(k));
  return q;
}

function connectLive() {
  if (state.source) state.source.close();
  const list = document.getElementById("entries");
  list.replaceChildren();
  const live = document.getElementById("live-state");
  live.textContent = "connecting…";
  const source = new EventSource("/ui/api/live?" + filterQuery().toString());
  state.source = source;
  source.addEventListener("open", () => { live.textContent = "● live"; });
  source.addEventListener("error", () => { live.textContent = "reconnecting…"; });
  source.addEventListener("entries", (ev) => {
    for (const e of JSON.parse(ev.data)) list.prepend(entryView(e));
    while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
  });
}

let filterTimer = null;
document.getElementById("filters").addEventListener("input", () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(connectLive, 250);
});
document.getElementById("filters").addEventListener("submit", (ev) => ev.preventDefault());

// ---- route tester
document.getElementById("test-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const out = document.getElementById("test-result");
  out.replaceChildren(el("p", { class: "muted", text: "evaluating…" }));
  try {
    const r = await api("test", { method: "POST", body: { topic: f.get("topic"), payload: f.get("payload") } });
    out.replaceChildren(el("p", { class: "summary", "data-testid": "test-summary", text: r.summary }),
      el("ol", {}, r.results.map(resultView)));
  } catch (e) {
    out.replaceChildren(el("p", { class: "error", text: String(e.message || e) }));
  }
});

function resultView(r) {
  const title = r.route ? "route “" + r.route + "”" : "command topic";
  const parts = [el("h4", {}, title + " ", badge(r.result === "call" ? "ok" : r.result === "skipped" ? "no_route" : (r.access && r.access.code) || (r.error && r.error.code) || r.result))];
  if (r.result === "call") {
    const when = r.when ? "when: true (or no condition) · " : "";
    parts.push(el("div", { text: when + "would call " + r.call.service + " · access: allowed" }), el("pre", { "data-testid": "test-call", text: pretty(r.call) }));
  } else if (r.result === "skipped") {
    parts.push(el("div", { class: "muted", text: "skipped: " + r.reason }));
  } else if (r.result === "denied") {
    parts.push(el("div", { "data-testid": "test-denied", text: "denied by [access] (" + r.access.code + "): " + r.access.reason }),
      el("div", { class: "muted", text: r.access.detail }));
  } else {
    parts.push(el("div", { class: "error", "data-testid": "test-error", text: r.error.code + ": " + r.error.detail }));
  }
  return el("li", { class: "result", "data-result": r.result }, parts);
}

// ---- status
function card(label, value, sub, good) {
  return el("div", { class: "card", "data-card": label },
    el("div", { class: "label", text: label }),
    el("div", { class: "value" + (good === true ? " ok-text" : good === false ? " err-text" : ""), text: String(value) }),
    sub ? el("div", { class: "sub", text: sub }) : null);
}

function chart(points, step) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const w = 600, h = 140, n = points.length || 1;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1, ...points.map((p) => p.ok + p.failed));
  const bw = w / n;
  points.forEach((p, i) => {
    for (const [value, base, cls] of [[p.ok, 0, "ok"], [p.failed, p.ok, "failed"]]) {
      if (!value) continue;
      const r = document.createElementNS(ns, "rect");
      const y = h - ((base + value) / max) * (h - 10);
      r.setAttribute("x", String(i * bw + 1)); r.setAttribute("width", String(Math.max(1, bw - 2)));
      r.setAttribute("y", String(y)); r.setAttribute("height", String((value / max) * (h - 10)));
      r.setAttribute("class", cls);
      const t = document.createElementNS(ns, "title");
      t.textContent = `${p.ago}s ago: ${p.ok} ok, ${p.failed} failed (per ${step}s)`;
      r.append(t);
      svg.append(r);
    }
  });
  return svg;
}

async function refreshStatus() {
  clearTimeout(state.statusTimer);
  try {
    const s = await api("status");
    const ha = s.home_assistant;
    const health = document.getElementById("health");
    const up = s.mqtt.connected && ha.reachable && ha.token_accepted;
    health.textContent = up ? "broker ✓ · HA ✓" : "broker " + (s.mqtt.connected ? "✓" : "✗") + " · HA " + (ha.reachable && ha.token_accepted ? "✓" : "✗");
    health.className = "pill " + (up ? "good" : "bad");
    if (state.tab === "status") {
      document.getElementById("cards").replaceChildren(
        card("MQTT broker", s.mqtt.connected ? "connected" : "disconnected", null, s.mqtt.connected),
        card("Home Assistant", ha.reachable ? (ha.token_accepted ? "connected" : "token refused") : "unreachable",
          "websocket " + (ha.websocket ? "up" : "down"), ha.reachable && ha.token_accepted),
        card("HA version", ha.version || "unknown", null),
        card("Auth gate", ha.auth_gate === "open" ? "open" : "closed", ha.auth_gate === "open" ? null : ha.auth_gate, ha.auth_gate === "open"),
        card("Queue", s.queue.depth + " / " + s.queue.capacity, "commands held / capacity"),
        card("Commands/s", s.commands_per_second, "over the last minute"),
        card("Retries", s.retries, "since start"),
        card("Dead letters", s.dead_letters_last_hour, "in the last hour", s.dead_letters_last_hour === 0),
        card("Gateway", s.gateway.version, s.gateway.dry_run ? "DRY RUN: nothing is sent to HA" : "up " + Math.round(s.gateway.uptime_seconds / 60) + " min"));
      document.getElementById("chart").replaceChildren(chart(s.chart.points, s.chart.step_seconds));
      document.getElementById("outcomes").replaceChildren(...Object.entries(s.outcomes).map(([k, v]) => el("span", {}, badge(k), " " + v)));
    }
  } catch (_) { /* the next refresh tries again */ }
  state.statusTimer = setTimeout(refreshStatus, state.tab === "status" ? 2000 : 10000);
}

// ---- dead letters
async function refreshDead() {
  const list = document.getElementById("dead-list");
  const r = await api("dead-letters");
  if (!r.dead_letters.length) { list.replaceChildren(el("li", { class: "muted", text: "No dead letters kept." })); return; }
  list.replaceChildren(...r.dead_letters.map((d) => {
    const result = el("div", { class: "replay-result", "data-testid": "replay-result" });
    const button = el("button", { class: "quiet", "data-testid": "replay", text: "Replay" });
    button.addEventListener("click", async () => {
      button.disabled = true;
      result.replaceChildren(el("span", { class: "muted", text: "replaying…" }));
      try {
        const out = await api("dead-letters/" + d.id + "/replay", { method: "POST" });
        result.replaceChildren(out.pending
          ? el("span", { class: "muted", text: "still on its way (queued or waiting for HA): see the live view" })
          : el("span", {}, "replayed: ", ...out.results.map((e) => [badge(e.outcome), " ", e.service || "", e.status ? " (HA " + e.status + ")" : ""])));
      } catch (e) {
        result.replaceChildren(el("span", { class: "error", text: String(e.message || e) }));
      }
      button.disabled = false;
    });
    return el("li", { class: "dead", "data-id": d.id },
      el("div", {}, el("strong", { text: d.topic }), " ", badge(d.reason), " ", button),
      el("div", { class: "muted", text: time(d.at) + " · " + d.attempts + " attempts" + (d.status ? " · HA " + d.status : "") + (d.route ? " · route “" + d.route + "”" : "") + (d.detail ? " · " + d.detail : "") }),
      el("pre", { text: d.payload }), result);
  }));
}

// ---- config
async function refreshConfig() {
  const c = await api("config");
  const rule = (r) => el("li", { class: "rule" },
    el("span", { class: "source mono", "data-testid": "source", text: r.source }),
    el("strong", { text: r.name }),
    el("pre", { text: pretty(r.rule) }));
  document.getElementById("routes").replaceChildren(...(c.rules.routes.length ? c.rules.routes.map(rule) : [el("li", { class: "muted", text: "No routes." })]));
  document.getElementById("access").replaceChildren(...c.rules.access.map(rule));
  const reload = document.getElementById("reload");
  const last = c.last_reload;
  reload.replaceChildren(!last ? el("p", { class: "muted", text: "Running the configuration loaded at start; no reload since." })
    : last.applied ? el("p", {}, badge("ok"), " last reload applied at " + new Date(last.at).toLocaleString())
      : el("div", {}, el("p", {}, badge("refused"), " last reload at " + new Date(last.at).toLocaleString() + " was refused; the rules below still run:"),
        el("ul", { class: "error" }, last.errors.map((e) => el("li", { text: e })))));
}

// ---- start
function start(loggedIn) {
  document.getElementById("login").hidden = true;
  document.getElementById("app").hidden = false;
  document.getElementById("logout").hidden = !loggedIn;
  connectLive();
  const tab = location.hash.slice(1);
  selectTab(["live", "tester", "status", "dead", "config"].includes(tab) ? tab : "live");
  refreshStatus();
}

(async () => {
  try {
    const s = await fetch("/ui/api/session", { credentials: "same-origin" }).then((r) => r.json());
    if (!s.logged_in) { showLogin(); return; }
    state.csrf = s.csrf;
    start(s.login_required);
  } catch (e) {
    document.body.prepend(el("p", { class: "error", text: "cannot reach the gateway: " + e }));
  }
})();
