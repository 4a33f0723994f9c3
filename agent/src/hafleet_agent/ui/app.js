// The live cluster page (GET /ui/, docs/monitoring.md): no framework, no build step.
//
// It asks for the API token once and keeps it in this tab's sessionStorage only; every API
// call sends it as "Authorization: Bearer". A loop refreshes the view from /v1/status,
// /v1/members, /v1/weights and /v1/health, then long-polls /v1/watch from the applied index it
// showed: a change of the replicated state (a leader's election entry, a member, a weight, a
// key) ends the poll at once, and an idle group still refreshes every WATCH_WAIT_S (the host
// metrics are not replicated state). Data is written with textContent only: a member id or a
// metric is never parsed as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "hafleet.ui.token";
  // how long a /v1/watch poll waits on an idle group: ?wait=30s in the page's URL (at most
  // 300 s, the API's bound), else 5 s
  const WATCH_WAIT_S = (() => {
    const m = /^([0-9]{1,3})s$/.exec(new URLSearchParams(location.search).get("wait") || "");
    return m && Number(m[1]) >= 1 && Number(m[1]) <= 300 ? Number(m[1]) : 5;
  })();
  const WATCH_TIMEOUT_MS = WATCH_WAIT_S * 1000 + 10000; // the poll's own wait and then some
  const REQUEST_TIMEOUT_MS = 10000;
  const MIN_REFRESH_MS = 1000; // a busy group refreshes the page at most this often
  const MAX_BACKOFF_MS = 5000;

  const $ = (id) => document.getElementById(id);
  let generation = 0; // a new token or "forget" ends the running loop
  let loopAbort = null;

  class Unauthorized extends Error {}

  // what fetch() can send in a header: no control character, nothing past U+00FF (a pasted
  // typographic quote would make every request fail, and the page retry for ever)
  const HEADER_SAFE = /^[\x20-\x7e\x80-\xff]+$/;

  function setText(id, text) {
    $(id).textContent = text === null || text === undefined || text === "" ? "-" : String(text);
  }

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined || text === "" ? "-" : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function setConn(state, text) {
    const el = $("conn");
    el.dataset.state = state;
    el.textContent = text;
  }

  // wait ms, or less when the signal aborts; no listener left behind
  function delay(ms, signal) {
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); signal.removeEventListener("abort", done); resolve(); };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done);
    });
  }

  // fetch with a timeout, cancelled too when the loop's signal aborts
  async function request(path, opts, timeoutMs, signal) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), timeoutMs);
    const stop = () => ctrl.abort();
    signal.addEventListener("abort", stop, { once: true });
    try {
      return await fetch(path, {
        ...opts,
        signal: ctrl.signal,
        cache: "no-store",
        credentials: "omit",
        redirect: "error",
      });
    } catch (err) {
      if (signal.aborted) throw err;
      throw new Error(ctrl.signal.aborted ? `${path}: no answer in ${timeoutMs / 1000} s` : `${path}: ${err.message}`);
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", stop);
    }
  }

  async function api(path, token, signal, timeoutMs = REQUEST_TIMEOUT_MS) {
    const resp = await request(path, { headers: { Authorization: `Bearer ${token}` } }, timeoutMs, signal);
    let body = null;
    try { body = await resp.json(); } catch (err) { body = null; }
    if (resp.status === 401) throw new Unauthorized((body && body.error) || "the agent refused the token");
    if (!resp.ok) throw new Error(`${path}: ${resp.status} ${(body && body.error) || resp.statusText}`);
    return body;
  }

  // /v1/health needs no token; 200 or 503 with the reason
  async function health(signal) {
    const resp = await request("/v1/health", {}, REQUEST_TIMEOUT_MS, signal);
    let body = null;
    try { body = await resp.json(); } catch (err) { body = null; }
    if (resp.ok) return { ok: true, text: "healthy" };
    const why = body && (body.reason || body.error || body.why);
    return { ok: false, text: `${resp.status}${why ? ": " + why : ""}` };
  }

  function pct(v) { return typeof v === "number" ? `${v.toFixed(1)} %` : null; }
  function num(v, digits) { return typeof v === "number" ? v.toFixed(digits) : null; }
  function rate(v) {
    if (typeof v !== "number") return "-";
    const units = ["B/s", "kB/s", "MB/s", "GB/s"];
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
    return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function healthOf(m) {
    const bad = [];
    if (m.healthy === false) bad.push("down");
    if (m.reachable === false) bad.push("unreachable");
    if (m.service_healthy === false) bad.push("service failing");
    if (m.draining) bad.push("draining");
    if (m.maintenance) bad.push("maintenance");
    return bad.length ? { text: bad.join(", "), cls: m.healthy === false ? "bad" : "warn" } : { text: "healthy", cls: "ok" };
  }

  function renderMembers(members, leaderId) {
    const rows = [];
    const sorted = [...members].sort((a, b) => (String(a.id) < String(b.id) ? -1 : String(a.id) > String(b.id) ? 1 : 0));
    for (const m of sorted) {
      const tr = document.createElement("tr");
      const id = String(m.id);
      const isLeader = leaderId !== null && id === String(leaderId);
      const role = isLeader ? "leader" : String(m.role || "-");
      tr.dataset.member = id;
      tr.dataset.role = role;
      if (isLeader) tr.className = "leader";
      cell(tr, id, "id").title = id;
      cell(tr, role, `role-${role}`);
      const h = healthOf(m);
      cell(tr, h.text, h.cls);
      cell(tr, m.weight, "num");
      const x = m.metrics || {};
      const cpu = pct(x.cpu_percent);
      cell(tr, cpu && typeof x.cpu_count === "number" ? `${cpu} of ${x.cpu_count}` : cpu, "num");
      cell(tr, num(x.load1, 2), "num");
      cell(tr, pct(x.mem_percent), "num");
      cell(tr, pct(x.disk_percent), "num");
      cell(tr, x.net_recv_rate === undefined ? null : `${rate(x.net_recv_rate)} / ${rate(x.net_sent_rate)}`, "num");
      cell(tr, m.api_addr);
      rows.push(tr);
    }
    $("member-rows").replaceChildren(...rows);
    setText("member-count", `(${members.length})`);
  }

  // the syncers registered with the group (status.balancers; absent from an older agent)
  function renderBalancers(balancers) {
    const list = Array.isArray(balancers) ? balancers : [];
    $("balancers").hidden = list.length === 0;
    const rows = [];
    for (const b of list) {
      const tr = document.createElement("tr");
      tr.dataset.balancer = String(b.id);
      cell(tr, b.id, "id").title = String(b.id);
      cell(tr, b.host);
      cell(tr, b.backend);
      cell(tr, b.strategy);
      const seen = typeof b.last_seen_s === "number" ? `${b.last_seen_s.toFixed(0)} s ago` : null;
      cell(tr, b.fresh === false && seen ? `${seen} (stale)` : seen, b.fresh === false ? "bad" : "");
      const vip = b.vip ? `${b.vip}${b.vip_held === true ? " (held)" : ""}` : null;
      cell(tr, vip, b.vip_held === true ? "ok" : "");
      rows.push(tr);
    }
    $("balancer-rows").replaceChildren(...rows);
  }

  function render(status, members, weights, hl) {
    const leader = status.leader_id;
    setText("cluster", status.cluster);
    document.title = `hafleet: ${status.cluster}`;
    setText("node-id", status.node_id);
    setText("node-state", status.state);
    setText("leader", leader === null ? "none known" : leader);
    $("leader").className = leader === null ? "bad" : "";
    setText("term", status.term);
    setText("indexes", `${status.commit_index} / ${status.applied_index}`);
    setText("health", hl.text);
    $("health").className = hl.ok ? "ok" : "bad";
    setText("weights-version", weights.version);
    setText("cluster-id", status.cluster_id);
    renderMembers(members, leader);
    renderBalancers(status.balancers);
    setText("updated", `updated ${new Date().toLocaleTimeString()}`);
  }

  async function refresh(token, signal) {
    const [status, members, weights, hl] = await Promise.all([
      api("/v1/status", token, signal),
      api("/v1/members", token, signal),
      api("/v1/weights", token, signal),
      health(signal),
    ]);
    if (signal.aborted) return null;
    render(status, members, weights, hl);
    return status.applied_index;
  }

  async function loop(token, gen, signal) {
    let backoff = 500;
    let last = 0;
    while (gen === generation) {
      try {
        const wait = last + MIN_REFRESH_MS - Date.now();
        if (wait > 0) await delay(wait, signal);
        if (signal.aborted) return;
        last = Date.now();
        const index = await refresh(token, signal);
        if (index === null) return;
        setConn("live", "live");
        backoff = 500;
        await api(`/v1/watch?index=${encodeURIComponent(index)}&wait=${WATCH_WAIT_S}s`, token, signal, WATCH_TIMEOUT_MS);
      } catch (err) {
        if (signal.aborted || gen !== generation) return;
        if (err instanceof Unauthorized) {
          askToken(`Refused: ${err.message}`);
          return;
        }
        setConn("error", `reconnecting: ${err.message}`);
        await delay(backoff, signal);
        backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      }
    }
  }

  function stopLoop() {
    generation += 1;
    if (loopAbort) loopAbort.abort();
    loopAbort = null;
  }

  function startLoop(token) {
    stopLoop();
    $("login").hidden = true;
    $("login-error").textContent = "";
    $("view").hidden = false;
    setConn("connecting", "connecting");
    loopAbort = new AbortController();
    loop(token, generation, loopAbort.signal);
  }

  function askToken(message) {
    stopLoop();
    sessionStorage.removeItem(TOKEN_KEY);
    $("view").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    setConn("idle", "not connected");
    $("token").value = "";
    $("token").focus();
  }

  function init() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      $("token").value = "";
      if (!token) return;
      if (!HEADER_SAFE.test(token)) {
        askToken("Refused: the token holds a character an HTTP header cannot carry (a token is plain ASCII)");
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      startLoop(token);
    });
    $("forget").addEventListener("click", () => askToken(""));
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) startLoop(token);
    else askToken("");
  }

  init();
})();
