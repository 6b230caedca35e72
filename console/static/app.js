// The Liaowang SOC console: one page, hash routes, every view built from the REST API (/api, see /openapi.json).
// Safety rule: data from traffic (names, URIs, SNI, user agents, payload snippets) is only ever put into the page as
// text nodes (h() below); nothing here assigns innerHTML. The server's CSP forbids inline and foreign scripts too.
import { t, language, setLanguage, fmtTime, fmtNumber, fmtBytes, timeZone } from "./i18n.js";

const GRADES = ["red", "orange", "yellow", "blue"];
const GRADE_COLORS = { red: "#e5484d", orange: "#f5a524", yellow: "#e8d44d", blue: "#3e8ed0", normal: "#30a46c" };
const STATUSES = ["new", "acknowledged", "investigating", "resolved", "false_positive"];
const PROTOCOLS = { 1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmpv6", 132: "sctp" };
const RANGES = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800, "30d": 2592000 };
const state = { me: null, range: sessionStorage.getItem("liaowang.range") || "all", custom: null, charts: [], events: null };

// -- DOM: elements with text children only --
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const pill = (grade) => h("span", { class: "pill " + grade }, t("level_" + grade).replace(/预警|warning/, "").trim() || grade);

// -- API --
async function api(path, options = {}) {
  const opts = { credentials: "same-origin", headers: {}, ...options };
  if (opts.body && typeof opts.body !== "string") { opts.body = JSON.stringify(opts.body); opts.headers["Content-Type"] = "application/json"; }
  if (opts.method && opts.method !== "GET" && state.me) opts.headers["X-CSRF-Token"] = state.me.csrf;
  const r = await fetch(path, opts);
  if (r.status === 401 && path !== "/api/login") { state.me = null; render(); throw new Error("401"); }
  if (!r.ok) { let msg = r.statusText; try { msg = (await r.json()).detail || msg; } catch (e) { /* not JSON */ } throw Object.assign(new Error(typeof msg === "string" ? msg : JSON.stringify(msg)), { status: r.status }); }
  return r.json();
}
function rangeParams() {
  if (state.range === "all") return {};
  if (state.range === "custom" && state.custom) return { start: state.custom[0], end: state.custom[1] };
  const end = new Date(); const start = new Date(end - (RANGES[state.range] || 3600) * 1000);
  return { start: start.toISOString(), end: end.toISOString() };
}
function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") p.set(k, v);
  const s = p.toString(); return s ? "?" + s : "";
}

// -- charts --
function chart(el, option) {
  const c = echarts.init(el, "dark", { renderer: "canvas" });
  c.setOption({ backgroundColor: "transparent", textStyle: { fontFamily: "system-ui, sans-serif" }, ...option });
  state.charts.push(c); el.dataset.chart = "1"; return c;
}
window.addEventListener("resize", () => state.charts.forEach((c) => c.resize()));
const tooltip = { trigger: "axis", renderMode: "richText" };

// -- layout --
const PAGES = ["overview", "incidents", "cases", "alerts", "hunt", "fiveg", "assets", "rules", "intel", "sensors", "notifications", "reports", "audit"];
const NOTIFY_STATUSES = ["queued", "retrying", "delivered", "failed", "digested"];
const INCIDENT_STATES = ["new", "investigating", "contained", "closed"];
const CONTAINMENT_FORMATS = ["nftables", "iptables", "suricata", "stix", "core"];
function header(active) {
  const nav = h("nav", {}, PAGES.filter((p) => p !== "audit" || (state.me && state.me.role === "admin"))
    .map((p) => h("a", { href: "#/" + p, class: p === active ? "active" : "", "data-page": p }, t(p))));
  const rangeSel = h("select", { id: "range", title: t("range"), onchange: (e) => { state.range = e.target.value; sessionStorage.setItem("liaowang.range", state.range); if (state.range === "custom") customRange(); else route(); } },
    ["all", ...Object.keys(RANGES), "custom"].map((k) => h("option", { value: k, selected: k === state.range }, k === "all" ? t("all") : k === "custom" ? t("custom") : t("last_" + k))));
  return h("header", {}, h("span", { class: "brand" }, t("brand")), nav,
    h("div", { class: "right" }, rangeSel, h("span", { class: "live", id: "live" }),
      h("span", { title: t("timezone") }, timeZone()),
      h("button", { id: "lang", onclick: () => { setLanguage(language() === "en" ? "zh-CN" : "en"); route(); } }, t("language")),
      h("span", {}, state.me ? `${state.me.username} (${state.me.role})` : ""),
      h("button", { id: "logout", onclick: logout }, t("logout"))));
}
function customRange() {
  const now = new Date(); const ago = new Date(now - 86400e3);
  const local = (d) => new Date(d - d.getTimezoneOffset() * 60e3).toISOString().slice(0, 16);
  const s = h("input", { type: "datetime-local", value: local(ago) }); const e = h("input", { type: "datetime-local", value: local(now) });
  const main = document.querySelector("main");
  main.prepend(h("div", { class: "toolbar" }, t("custom"), s, e, h("button", { class: "primary", onclick: () => { state.custom = [new Date(s.value).toISOString(), new Date(e.value).toISOString()]; route(); } }, t("apply"))));
}
function shell(active, ...content) {
  state.charts.forEach((c) => c.dispose()); state.charts = [];
  const app = document.getElementById("app");
  app.replaceChildren(header(active), h("main", {}, ...content));
  return app.querySelector("main");
}
function table(columns, rows, opts = {}) {
  const head = h("tr", {}, columns.map((c) => h("th", { onclick: c.sort && opts.onSort ? () => opts.onSort(c.sort) : null, title: c.sort ? "sort" : null }, c.label)));
  const body = rows.length ? rows.map((r) => h("tr", { "data-id": opts.id ? opts.id(r) : null }, columns.map((c) => h("td", { class: c.mono ? "mono" : null }, c.render ? c.render(r) : r[c.key] ?? ""))))
    : [h("tr", {}, h("td", { colspan: columns.length, class: "dim" }, t("nothing")))];
  return h("table", {}, h("thead", {}, head), h("tbody", {}, body));
}
function pager(total, limit, offset, go) {
  return h("div", { class: "pager" }, h("button", { disabled: offset <= 0, onclick: () => go(Math.max(0, offset - limit)) }, t("prev")),
    `${fmtNumber(total ? offset + 1 : 0)}–${fmtNumber(Math.min(offset + limit, total))} ${t("of")} ${fmtNumber(total)}`,
    h("button", { disabled: offset + limit >= total, onclick: () => go(offset + limit) }, t("next")));
}
function card(title, span, ...content) { return h("div", { class: "card " + span }, h("h3", {}, title), ...content); }
function fail(main, err) { main.append(h("p", { class: "error" }, `${t(err.status === 403 ? "forbidden" : "error")}: ${err.message}`)); }

// -- login --
function loginPage(message) {
  const u = h("input", { id: "username", autocomplete: "username", placeholder: t("username") });
  const p = h("input", { id: "password", type: "password", autocomplete: "current-password", placeholder: t("password") });
  const msg = h("p", { class: "error", id: "login-error" }, message || "");
  const submit = async (e) => {
    e.preventDefault();
    try { state.me = await api("/api/login", { method: "POST", body: { username: u.value, password: p.value } }); route(); }
    catch (err) { msg.textContent = err.status === 429 ? err.message : t("login_failed"); }
  };
  document.getElementById("app").replaceChildren(h("form", { class: "login card", onsubmit: submit },
    h("h2", {}, t("brand")), u, p, h("button", { class: "primary", type: "submit", id: "login" }, t("login")), msg,
    h("p", {}, h("a", { onclick: () => { setLanguage(language() === "en" ? "zh-CN" : "en"); loginPage(); } }, t("language")))));
}
async function logout() { try { await api("/api/logout", { method: "POST" }); } catch (e) { /* gone anyway */ } state.me = null; render(); }

// -- overview --
// posture: where scopes stand, and why their warning levels changed (overview and incident pages)
const scopeColumns = [{ label: t("scope"), key: "scope", mono: true }, { label: t("level"), render: (x) => pill(x.level) },
  { label: t("score"), key: "score" }, { label: t("reason"), key: "reason" }];
const levelChangeColumns = [{ label: t("time"), render: (x) => fmtTime(x.ts) }, { label: t("scope"), key: "scope", mono: true },
  { label: t("level"), render: (x) => h("span", {}, pill(x.from_level), " → ", pill(x.to_level)) }, { label: t("reason"), key: "reason" }];
async function overview() {
  const main = shell("overview");
  let o; try { o = await api("/api/overview" + qs(rangeParams())); } catch (e) { return fail(main, e); }
  const w = o.warning;
  const level = h("div", { class: "level lv-" + w.level, id: "warning-level" }, h("div", {}, t("warning_level")),
    h("div", { class: "big" }, t("level_" + w.level)),
    h("div", {}, `${t("open_alerts")}: `, GRADES.map((g) => `${t("level_" + g).replace(/预警|warning/, "").trim()} ${w.open[g]}  `)),
    w.why.length ? h("div", {}, t("why") + ": ", w.why.map((x, i) => [i ? "; " : "", `${x.signature} ×${x.count}`])) : null);
  const stats = h("div", { class: "card span4" }, h("h3", {}, t("total")),
    h("div", { class: "grid" }, [["flows", fmtNumber(o.totals.flows)], ["bytes", fmtBytes(o.totals.bytes)], ["packets", fmtNumber(o.totals.packets)], ["alerts_n", fmtNumber(o.totals.alerts)]]
      .map(([k, v]) => h("div", { class: "span6 stat" }, v, h("small", {}, t(k))))));
  const el = (id, tall) => h("div", { class: "chart" + (tall ? " tall" : ""), id });
  const recent = table([{ label: t("time"), render: (a) => fmtTime(a.first_seen) }, { label: t("level"), render: (a) => pill(a.level) },
    { label: t("signature"), render: (a) => h("a", { href: "#/alert/" + encodeURIComponent(a.alert_id) }, a.signature) },
    { label: t("source"), key: "src_ip", mono: true }, { label: t("target"), key: "dst_ip", mono: true }], o.recent_critical);
  main.append(h("div", { class: "grid" },
    h("div", { class: "span4" }, level), card(t("posture"), "span4", el("posture-gauge")), stats,
    card(t("traffic"), "span6", el("traffic")), card(t("alerts_by_level"), "span6", el("alerts-levels")),
    card(t("posture_trend"), "span4", el("posture-trend")), card(t("planes"), "span4", el("planes")), card(t("applications"), "span4", el("apps")),
    card(t("top_targets"), "span4", el("targets")), card(t("top_sources"), "span4", el("sources")), card(t("attack_graph"), "span4", el("graph")),
    card(t("recent_critical"), "span12", h("div", { id: "recent" }, recent)),
    card(t("posture_scopes"), "span6", h("div", { id: "posture-scopes" }, o.scopes.length ? table(scopeColumns, o.scopes) : h("p", { class: "dim" }, t("nothing")))),
    card(t("level_changes"), "span6", h("div", { id: "level-changes" }, o.level_changes.length ? table(levelChangeColumns, o.level_changes) : h("p", { class: "dim" }, t("nothing")))),
    card(t("trend_forecast"), "span6", o.trend.length ? h("select", { id: "trend-series", onchange: (e) => trendChart(main, o.trend.find((x) => x.series === e.target.value)) },
      o.trend.map((x) => h("option", { value: x.series }, x.series))) : null, o.trend.length ? el("trend-chart") : h("p", { class: "dim" }, t("nothing"))),
    card(t("trend_warnings"), "span6", h("div", { id: "trend-warnings" }, o.trend_warnings.length ? table([{ label: t("time"), render: (x) => fmtTime(x.ts) },
      { label: t("kind"), render: (x) => h("span", { class: "pill " + (x.kind === "crossed" ? "orange" : "yellow") }, t("trend_kind_" + x.kind)) }, { label: t("series"), key: "series", mono: true },
      { label: t("expected_at"), render: (x) => x.kind === "forecast" ? fmtTime(x.expected_at) : "" }, { label: t("reason"), key: "reason" }], o.trend_warnings)
      : h("p", { class: "dim" }, t("nothing"))))));
  if (o.trend.length) {
    const first = o.trend.find((x) => x.state !== "normal") || o.trend.find((x) => x.series === "alerts:all") || o.trend[0];
    main.querySelector("#trend-series").value = first.series; trendChart(main, first);
  }
  const times = o.histogram.map((b) => fmtTime(b.bucket));
  chart(main.querySelector("#posture-gauge"), { series: [{ type: "gauge", min: 0, max: 100, progress: { show: true }, detail: { valueAnimation: false, formatter: "{value}" },
    axisLine: { lineStyle: { color: [[0.4, GRADE_COLORS.red], [0.7, GRADE_COLORS.orange], [0.9, GRADE_COLORS.yellow], [1, GRADE_COLORS.normal]] } }, data: [{ value: o.posture.score }] }] });
  chart(main.querySelector("#traffic"), { tooltip, legend: { data: [t("bytes"), t("flows")] }, xAxis: { type: "category", data: times },
    yAxis: [{ type: "value", name: t("bytes") }, { type: "value", name: t("flows") }],
    series: [{ name: t("bytes"), type: "line", areaStyle: {}, data: o.histogram.map((b) => b.bytes) }, { name: t("flows"), type: "line", yAxisIndex: 1, data: o.histogram.map((b) => b.flows) }] });
  chart(main.querySelector("#alerts-levels"), { tooltip, legend: {}, xAxis: { type: "category", data: times }, yAxis: { type: "value" },
    series: GRADES.map((g) => ({ name: t("level_" + g), type: "bar", stack: "a", color: GRADE_COLORS[g], data: o.histogram.map((b) => b["alerts_" + g]) })) });
  chart(main.querySelector("#posture-trend"), { tooltip, xAxis: { type: "category", data: o.posture.trend.map((b) => fmtTime(b.bucket)) }, yAxis: { type: "value", min: 0, max: 100 },
    series: [{ type: "line", name: t("posture"), data: o.posture.trend.map((b) => b.score) }] });
  chart(main.querySelector("#planes"), { tooltip: { trigger: "item", renderMode: "richText" }, series: [{ type: "pie", radius: ["35%", "70%"], data: o.planes.map((p) => ({ name: p.plane, value: p.bytes })) }] });
  const bars = (sel, rows, key, value, onClick) => {
    const c = chart(main.querySelector(sel), { tooltip: { ...tooltip, axisPointer: { type: "shadow" } }, grid: { left: 130 }, xAxis: { type: "value" },
      yAxis: { type: "category", inverse: true, data: rows.map((r) => String(r[key] ?? "?")) }, series: [{ type: "bar", data: rows.map((r) => r[value]) }] });
    if (onClick) c.on("click", (p) => onClick(rows[p.dataIndex]));
  };
  bars("#apps", o.applications, "application_hint", "bytes");
  bars("#targets", o.top_targets, "dst_ip", "count", (r) => { location.hash = "#/alerts?ip=" + encodeURIComponent(r.dst_ip); });
  bars("#sources", o.top_sources, "src_ip", "count", (r) => { location.hash = "#/alerts?ip=" + encodeURIComponent(r.src_ip); });
  const nodes = [...new Set(o.graph.flatMap((e) => [e.src_ip, e.dst_ip]).filter(Boolean))];
  chart(main.querySelector("#graph"), { tooltip: { renderMode: "richText" }, series: [{ type: "graph", layout: "force", roam: true, force: { repulsion: 120, edgeLength: 70 },
    edgeSymbol: ["none", "arrow"], label: { show: nodes.length < 25, fontSize: 10 },
    data: nodes.map((n) => ({ name: n, symbolSize: 10 + 4 * Math.min(8, o.top_targets.filter((x) => x.dst_ip === n).reduce((s, x) => s + Math.log2(1 + x.count), 0)) })),
    links: o.graph.filter((e) => e.src_ip && e.dst_ip).map((e) => ({ source: e.src_ip, target: e.dst_ip, value: e.count, lineStyle: { width: 1 + Math.log2(e.count) } })) }] });
  listen(main);
}
function trendChart(main, row) {
  const el = main.querySelector("#trend-chart"); const old = echarts.getInstanceByDom(el);
  if (old) { state.charts = state.charts.filter((c) => c !== old); old.dispose(); }
  const step = row.bucket_s * 1000; const last = Date.parse(row.bucket);
  const times = [...row.history.map((_, i) => last - (row.history.length - 1 - i) * step), ...row.forecast.map((_, i) => last + (i + 1) * step)];
  const pad = (values, before) => [...Array(before).fill(null), ...values];
  chart(el, { tooltip, legend: { data: [t("observed"), t("forecast")] }, xAxis: { type: "category", data: times.map((x) => fmtTime(new Date(x).toISOString())) }, yAxis: { type: "value" },
    series: [{ name: t("observed"), type: "line", data: row.history },
      { name: t("forecast"), type: "line", lineStyle: { type: "dashed" }, data: pad([row.history[row.history.length - 1], ...row.forecast], row.history.length - 1),
        markLine: row.threshold == null ? undefined : { symbol: "none", label: { formatter: t("threshold") + " {c}" }, lineStyle: { color: GRADE_COLORS.orange }, data: [{ yAxis: row.threshold }] } }] });
}
function listen(main) {
  if (state.events) state.events.close();
  const es = new EventSource("/api/events"); state.events = es; let first = true;
  es.addEventListener("update", (ev) => {
    const live = document.getElementById("live"); if (live) live.textContent = "● " + t("live") + " " + new Date().toLocaleTimeString(language());
    if (first) { first = false; return; }
    if (location.hash.startsWith("#/overview") || location.hash === "" || location.hash === "#/") overview();
    void ev;
  });
}

// -- alerts --
function hashParams() { const i = location.hash.indexOf("?"); return new URLSearchParams(i >= 0 ? location.hash.slice(i + 1) : ""); }
async function alerts() {
  const params = hashParams();
  const f = Object.fromEntries(["level", "category", "detector", "technique", "ip", "subscriber", "status", "text", "sort", "group"].map((k) => [k, params.get(k) || ""]));
  const offset = Number(params.get("offset") || 0); const limit = 50;
  const main = shell("alerts");
  const inputs = {};
  const field = (k, label, el) => { inputs[k] = el; el.value = f[k]; el.setAttribute("name", k); el.setAttribute("title", label); return el; };
  const go = (extra = {}) => { const p = new URLSearchParams(); for (const [k, el] of Object.entries(inputs)) if (el.value) p.set(k, el.value); for (const [k, v] of Object.entries(extra)) if (v) p.set(k, v); location.hash = "#/alerts?" + p.toString(); };
  const select = (k, label, options) => field(k, label, h("select", {}, h("option", { value: "" }, label), options.map(([v, l]) => h("option", { value: v }, l))));
  main.append(h("form", { class: "toolbar", id: "alert-filters", onsubmit: (e) => { e.preventDefault(); go(); } },
    select("level", t("level"), GRADES.map((g) => [g, t("level_" + g)])), select("status", t("status"), STATUSES.map((s) => [s, t("status_" + s)])),
    field("category", t("category"), h("input", { placeholder: t("category"), size: 14 })), field("detector", t("detector"), h("input", { placeholder: t("detector"), size: 12 })),
    field("technique", t("technique"), h("input", { placeholder: "T1046 / FGT1498", size: 12 })), field("ip", t("ip"), h("input", { placeholder: t("ip"), size: 16 })),
    field("subscriber", t("subscriber"), h("input", { placeholder: t("subscriber"), size: 14 })), field("text", t("text"), h("input", { placeholder: t("text"), size: 14 })),
    select("group", t("group_by"), [["signature", t("signature")], ["src_ip", t("source")], ["dst_ip", t("target")]]),
    h("button", { class: "primary", type: "submit", id: "apply-filters" }, t("search"))));
  const query = { ...rangeParams(), ...Object.fromEntries(Object.entries(f).filter(([k]) => k !== "group")), limit, offset };
  try {
    if (f.group) {
      const groups = await api("/api/alerts/groups" + qs({ ...query, by: f.group, limit: undefined, offset: undefined }));
      main.append(table([{ label: t(f.group === "signature" ? "signature" : f.group === "src_ip" ? "source" : "target"), render: (g) => h("a", { onclick: () => { if (f.group === "signature") inputs.text.value = g.value; else inputs.ip.value = g.value; inputs.group.value = ""; go(); } }, g.value ?? "—") },
        { label: t("count"), key: "count" }], groups));
      return;
    }
    const page = await api("/api/alerts" + qs(query));
    const chosen = new Set();
    const canTriage = state.me.role !== "viewer";
    const count = h("span", { id: "selected-count" }, `0 ${t("selected")}`);
    const status = h("select", { id: "bulk-status" }, h("option", { value: "" }, t("no_change")), STATUSES.map((s) => h("option", { value: s }, t("status_" + s))));
    const assignee = h("input", { id: "bulk-assignee", placeholder: t("assign_to"), size: 12 });
    const comment = h("input", { id: "bulk-comment", placeholder: t("comment"), size: 30 });
    const result = h("span", { class: "ok", id: "triage-result" });
    const apply = h("button", { class: "primary", id: "bulk-apply", disabled: !canTriage, title: canTriage ? "" : t("forbidden"), onclick: async () => {
      if (!chosen.size) return;
      try { const r = await api("/api/alerts/triage", { method: "POST", body: { alert_ids: [...chosen], status: status.value || null, assignee: assignee.value || null, comment: comment.value || null } });
        result.textContent = `${t("done")}: ${r.updated.length}`; setTimeout(alerts, 400); } catch (e) { result.textContent = e.message; result.className = "error"; }
    } }, t("triage"));
    main.append(h("div", { class: "toolbar" }, count, status, assignee, comment, apply, result));
    const sortBy = (col) => go({ sort: f.sort === "-" + col ? col : "-" + col });
    main.append(table([
      { label: h("input", { type: "checkbox", id: "select-all", disabled: !canTriage, onchange: (e) => { main.querySelectorAll("input.pick").forEach((c) => { c.checked = e.target.checked; c.dispatchEvent(new Event("change")); }); } }),
        render: (a) => h("input", { type: "checkbox", class: "pick", disabled: !canTriage, onchange: (e) => { e.target.checked ? chosen.add(a.alert_id) : chosen.delete(a.alert_id); count.textContent = `${chosen.size} ${t("selected")}`; } }) },
      { label: t("time"), sort: "first_seen", render: (a) => fmtTime(a.first_seen) }, { label: t("level"), sort: "level", render: (a) => pill(a.level) },
      { label: t("signature"), sort: "signature", render: (a) => h("a", { href: "#/alert/" + encodeURIComponent(a.alert_id), class: "alert-link" }, a.signature) },
      { label: t("category"), key: "category" }, { label: t("detector"), key: "detector" },
      { label: t("technique"), render: (a) => (a.tags || []).filter((x) => /^(attack|fight)\.(t|fgt)\d/.test(x)).join(" ") },
      { label: t("source"), sort: "src_ip", key: "src_ip", mono: true }, { label: t("target"), sort: "dst_ip", key: "dst_ip", mono: true },
      { label: t("score"), sort: "score", key: "score" }, { label: t("status"), sort: "status", render: (a) => t("status_" + a.status) }, { label: t("assignee"), key: "assignee" },
    ], page.rows, { id: (a) => a.alert_id, onSort: sortBy }));
    main.append(pager(page.total, limit, offset, (o) => go({ offset: o, sort: f.sort })));
  } catch (e) { fail(main, e); }
}

async function alertDetail(id) {
  const main = shell("alerts");
  let d; try { d = await api("/api/alerts/" + encodeURIComponent(id)); } catch (e) { return fail(main, e); }
  const a = d.alert;
  const kv = (pairs) => h("div", { class: "kv" }, pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [h("div", {}, k), h("div", { class: "mono" }, v ?? "")]));
  const canTriage = state.me.role !== "viewer";
  const status = h("select", { id: "detail-status", disabled: !canTriage }, STATUSES.map((s) => h("option", { value: s, selected: s === a.status }, t("status_" + s))));
  const assignee = h("input", { id: "detail-assignee", value: a.assignee || "", placeholder: t("assign_to"), disabled: !canTriage });
  const comment = h("textarea", { id: "detail-comment", rows: 2, cols: 50, placeholder: t("comment"), disabled: !canTriage });
  const result = h("span", { id: "detail-result", class: "ok" });
  const save = h("button", { class: "primary", id: "detail-save", disabled: !canTriage, onclick: async () => {
    try { await api("/api/alerts/triage", { method: "POST", body: { alert_ids: [a.alert_id], status: status.value, assignee: assignee.value || null, comment: comment.value || null } }); result.textContent = t("done"); setTimeout(() => alertDetail(id), 300); }
    catch (e) { result.textContent = e.message; result.className = "error"; } } }, t("save"));
  const ev = a.evidence && typeof a.evidence === "object" ? a.evidence : null;
  const explain = ev ? `${ev.function || "count"}${ev.field ? "(" + ev.field + ")" : ""} = ${ev.peak} ≥ ${ev.threshold} / ${ev.window_s}s × ${ev.windows || a.window_count}` : "";
  main.append(h("div", { class: "toolbar" }, h("a", { href: "#/alerts" }, "← " + t("back"))),
    h("div", { class: "grid" },
      card(t("alert_detail"), "span7", h("h2", { id: "alert-title" }, pill(a.level), " ", a.signature),
        kv([[t("time"), `${fmtTime(a.first_seen)} — ${fmtTime(a.last_seen)}`], [t("category"), a.category], [t("detector"), a.detector], [t("rule"), a.rule_id],
          [t("technique"), (a.tags || []).join(" ")], [t("source"), `${a.src_ip ?? ""}:${a.src_port ?? ""}`], [t("target"), `${a.dst_ip ?? ""}:${a.dst_port ?? ""}`],
          [t("group"), a.group], [t("detail"), a.detail], ["community_id", a.community_id]])),
      card(t("triage"), "span5", kv([[t("status"), t("status_" + a.status)], [t("assignee"), a.assignee || "—"]]),
        h("div", { class: "toolbar" }, status, assignee), comment, h("div", { class: "toolbar" }, save, result),
        h("h3", {}, t("comments")), d.comments.length ? d.comments.map((c) => h("p", { class: "comment" }, h("span", { class: "dim" }, `${fmtTime(new Date(c.ts_ms).toISOString())} ${c.username}: `), c.body)) : h("p", { class: "dim" }, t("nothing")),
        h("h3", {}, t("audit_trail")), table([{ label: t("time"), render: (x) => fmtTime(new Date(x.ts_ms).toISOString()) }, { label: t("user"), key: "username" }, { label: t("action"), key: "action" }, { label: t("detail"), render: (x) => JSON.stringify(x.detail) }], d.audit)),
      card(t("why_fired"), "span6", h("p", {}, `${t("score")}: ${a.score}  (${a.rule_level} → ${t("level_" + a.level)}) ${explain}`), h("h3", {}, t("evidence")), h("pre", { id: "evidence" }, ev ? JSON.stringify(ev, null, 2) : String(a.evidence ?? ""))),
      card(t("flow"), "span6", d.flow ? [kv([["flow_id", String(d.flow.flow_id)], [t("plane"), d.flow.plane], ["5-tuple", `${d.flow.src_ip}:${d.flow.src_port} → ${d.flow.dst_ip}:${d.flow.dst_port} (${d.flow.ip_proto})`],
          ["TEID", d.flow.teid], [t("packets"), fmtNumber(d.flow.bidirectional_packets)], [t("bytes"), fmtBytes(d.flow.bidirectional_bytes)], [t("server_name"), d.flow.server_name], [t("app"), d.flow.application_hint]]),
        h("p", {}, h("a", { id: "download-pcap", href: "/api/alerts/" + encodeURIComponent(a.alert_id) + "/pcap", download: "" }, "⬇ " + t("download_pcap")))] : h("p", { class: "dim" }, t("no_flow"))),
      card(t("session"), "span6", a.session ? h("pre", {}, JSON.stringify(a.session, null, 2)) : h("p", { class: "dim" }, t("nothing"))),
      card(t("related"), "span6", table([{ label: t("time"), render: (r) => fmtTime(r.first_seen) }, { label: t("level"), render: (r) => pill(r.level) },
        { label: t("signature"), render: (r) => h("a", { href: "#/alert/" + encodeURIComponent(r.alert_id) }, r.signature) }, { label: t("source"), key: "src_ip" }, { label: t("target"), key: "dst_ip" }], d.related))));
}

// -- hunt --
const HUNT_COLUMNS = [["first_seen", "time"], ["plane", "plane"], ["src_ip", "source"], ["src_port", "port"], ["dst_ip", "target"], ["dst_port", "port"], ["ip_proto", "proto"],
  ["teid", "TEID"], ["application_hint", "app"], ["server_name", "server_name"], ["bidirectional_packets", "packets"], ["bidirectional_bytes", "bytes"], ["bidirectional_duration_ms", "duration"]];
async function hunt() {
  const params = hashParams(); const q = params.get("q") || ""; const offset = Number(params.get("offset") || 0); const sort = params.get("sort") || ""; const limit = 50;
  const main = shell("hunt");
  const input = h("input", { id: "hunt-query", value: q, size: 90, placeholder: t("hunt_hint") });
  const go = (query, extra = {}) => { location.hash = "#/hunt" + qs({ q: query, ...extra }); };
  main.append(h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); go(input.value); } }, input, h("button", { class: "primary", type: "submit", id: "hunt-go" }, t("search"))),
    h("p", { class: "dim" }, t("hunt_hint") + " · " + t("pivot")));
  try {
    // only the columns shown (a flow has 72): the search reads half as much
    const page = await api("/api/flows" + qs({ ...rangeParams(), q, sort, limit, offset, fields: HUNT_COLUMNS.map(([col]) => col).join(",") }));
    // counts and durations read better grouped and rounded (ports, TEIDs and addresses are shown as they are)
    const shown = (col, v) => col === "first_seen" ? fmtTime(v) : col === "ip_proto" ? (PROTOCOLS[v] || String(v))
      : col.startsWith("bidirectional_") ? fmtNumber(v) : String(v);
    const pivotable = (col, v) => v == null || v === "" ? "" : h("span", { class: "pivot", onclick: () => go((q ? q + " " : "") + `${col}=${/\s/.test(String(v)) ? JSON.stringify(String(v)) : v}`) }, shown(col, v));
    main.append(h("p", {}, `${fmtNumber(page.total)} ${t("results")}`),
      table(HUNT_COLUMNS.map(([col, label]) => ({ label: t(label), sort: col, mono: col.endsWith("_ip"), render: (r) => pivotable(col, r[col]) }))
        .concat([{ label: "pcap", render: (r) => h("a", { href: `/api/flows/${r.flow_id}/pcap`, download: "" }, "⬇") }]), page.rows,
      { id: (r) => r.flow_id, onSort: (col) => go(q, { sort: sort === "-" + col ? col : "-" + col }) }),
      pager(page.total, limit, offset, (o) => go(q, { offset: o, sort })));
  } catch (e) { fail(main, e); }
}

// -- 5G --
async function fiveg() {
  const main = shell("fiveg");
  try {
    const [sessions, inventory, topo] = await Promise.all([api("/api/sessions" + qs({ ...rangeParams(), limit: 100 })), api("/api/inventory"), api("/api/topology" + qs(rangeParams()))]);
    main.append(h("div", { class: "grid" },
      card(t("topology"), "span7", h("div", { class: "chart tall", id: "topology" })),
      card(t("inventory"), "span5", table([{ label: "IP", key: "ip", mono: true }, { label: t("role"), key: "role" }, { label: t("port"), render: (n) => (n.ports || []).join(" ") },
        { label: t("last_seen"), render: (n) => fmtTime(n.last_seen) }], inventory.rows)),
      card(`${t("sessions")} (${fmtNumber(sessions.total)})`, "span12", table([
        { label: t("subscriber"), key: "subscriber", mono: true }, { label: "PDU", key: "pdu_session_id" }, { label: t("state"), key: "state" }, { label: t("dnn"), key: "dnn" },
        { label: t("snssai"), key: "snssai" }, { label: t("gnb"), key: "gnb_ip", mono: true }, { label: t("upf"), key: "upf_ip", mono: true },
        { label: t("teids"), render: (s) => `${s.ul_teid ?? "—"} / ${s.dl_teid ?? "—"}` }, { label: t("ue_ip"), key: "ue_ip", mono: true },
        { label: t("traffic_n"), render: (s) => fmtBytes(s.gtpu_bytes) }, { label: t("alerts_n"), key: "alerts" }, { label: t("first_seen"), render: (s) => fmtTime(s.first_seen) },
        { label: t("hunt"), render: (s) => h("a", { href: "#/hunt?q=" + encodeURIComponent("session=" + s.session_id) }, "→") }], sessions.rows))));
    const colors = { N2: "#3ea6ff", N3: "#30a46c", N4: "#f5a524", SBI: "#a78bfa", "S1/S11/S5": "#e8d44d", Diameter: "#e5484d" };
    chart(main.querySelector("#topology"), { tooltip: { renderMode: "richText" }, legend: { data: Object.keys(colors) },
      series: [{ type: "graph", layout: "force", roam: true, force: { repulsion: 180, edgeLength: 90 }, label: { show: true, fontSize: 10 },
        categories: Object.keys(colors).map((n) => ({ name: n, itemStyle: { color: colors[n] } })),
        data: topo.nodes.map((n) => ({ name: n.ip, value: n.roles.join(","), symbolSize: n.roles.length ? 26 : 12, label: { formatter: n.roles.length ? n.roles.join("/") + "\n" + n.ip : n.ip } })),
        links: topo.edges.map((e) => ({ source: e.source, target: e.target, value: e.flows, lineStyle: { color: colors[e.plane] || "#888", width: 1 + Math.log2(1 + e.flows) } })) }] });
  } catch (e) { fail(main, e); }
}

// -- assets --
async function assets() {
  const params = hashParams(); const offset = Number(params.get("offset") || 0); const sort = params.get("sort") || "-bytes_sent"; const limit = 50;
  const main = shell("assets");
  try {
    const page = await api("/api/assets" + qs({ ...rangeParams(), sort, limit, offset }));
    main.append(table([{ label: "IP", key: "ip", mono: true, sort: "ip" }, { label: t("roles"), render: (a) => (a.roles || []).join(" ") },
      { label: t("services"), render: (a) => a.services.map((s) => `${s.dst_port}/${s.ip_proto}${s.application_hint ? " " + s.application_hint : ""}`).join(", ") },
      { label: t("exposures"), render: (a) => a.exposures.map((x) => h("div", {}, pill(x.level), " ", h("a", { href: "#/alert/" + encodeURIComponent(x.alert_id) }, x.signature), x.detail ? " — " + x.detail : "")) },
      { label: t("alerts_n"), key: "alerts_against" }, { label: t("risk"), key: "risk" }, { label: t("flows"), key: "flows", sort: "flows" }, { label: t("peers"), key: "peers", sort: "peers" },
      { label: t("sent"), render: (a) => fmtBytes(a.bytes_sent), sort: "bytes_sent" }, { label: t("received"), render: (a) => fmtBytes(a.bytes_received), sort: "bytes_received" },
      { label: t("last_seen"), render: (a) => fmtTime(a.last_seen), sort: "last_seen" }], page.rows,
    { onSort: (col) => { location.hash = "#/assets" + qs({ sort: sort === "-" + col ? col : "-" + col }); } }),
    pager(page.total, limit, offset, (o) => { location.hash = "#/assets" + qs({ offset: o, sort }); }));
  } catch (e) { fail(main, e); }
}

// -- rules --
async function rules() {
  const params = hashParams(); const text = params.get("text") || "";
  const main = shell("rules");
  const input = h("input", { id: "rule-search", value: text, placeholder: t("search"), size: 40 });
  main.append(h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); location.hash = "#/rules" + qs({ text: input.value }); } }, input, h("button", { class: "primary", type: "submit" }, t("search")),
    state.me.role === "admin" ? null : h("span", { class: "dim" }, t("admin_only"))));
  const yaml = h("pre", { id: "rule-yaml", hidden: true });
  try {
    const list = await api("/api/rules" + qs({ text }));
    const admin = state.me.role === "admin";
    const change = async (id, body) => { try { await api("/api/rules/" + id, { method: "PATCH", body }); rules(); } catch (e) { alert(e.message); } };
    main.append(table([{ label: t("level"), render: (r) => pill(r.grade) }, { label: t("signature"), key: "title" }, { label: t("rule_status"), key: "status" }, { label: t("category"), key: "category" },
      { label: t("technique"), render: (r) => r.tags.join(" ") },
      { label: t("enabled"), render: (r) => h("input", { type: "checkbox", class: "rule-enabled", checked: r.enabled, disabled: !admin, onchange: (e) => change(r.id, { enabled: e.target.checked }) }) },
      { label: t("threshold"), render: (r) => { const i = h("input", { type: "number", min: 1, value: r.threshold, disabled: !admin, class: "rule-threshold" }); return h("span", { style: "white-space:nowrap" }, i, admin ? h("button", { onclick: () => change(r.id, { threshold: Number(i.value) }) }, t("save")) : null); } },
      { label: t("window"), key: "window_s" },
      { label: "", render: (r) => h("a", { onclick: async () => { const d = await api("/api/rules/" + r.id); yaml.hidden = false; yaml.textContent = d.yaml; yaml.scrollIntoView(); } }, t("view_yaml")) }], list), yaml);
  } catch (e) { fail(main, e); }
}

// -- incidents: alerts of one actor as a story of stages --
const tactic = (name) => t("tactic_" + name);
function stageLine(stages) {
  return h("ol", { class: "stages" }, stages.map((s) => h("li", { title: s.signatures.join("\n") }, h("b", {}, tactic(s.tactic)), " ",
    h("span", { class: "dim" }, `${fmtTime(new Date(s.first_seen_ns / 1e6).toISOString())} · ${fmtNumber(s.alerts)}`))));
}
async function incidents() {
  const params = hashParams(); const offset = Number(params.get("offset") || 0); const limit = 50;
  const level = params.get("level") || ""; const st = params.get("state") || "";
  const main = shell("incidents");
  const levelSel = h("select", { name: "level" }, ["", ...GRADES].map((g) => h("option", { value: g, selected: g === level }, g ? t("level_" + g) : t("level"))));
  const stateSel = h("select", { name: "state" }, ["", ...INCIDENT_STATES].map((s) => h("option", { value: s, selected: s === st }, s ? t("istate_" + s) : t("state"))));
  main.append(h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); location.hash = "#/incidents" + qs({ level: levelSel.value, state: stateSel.value }); } },
    levelSel, stateSel, h("button", { class: "primary", type: "submit", id: "incident-filter" }, t("apply"))));
  try {
    const page = await api("/api/incidents" + qs({ ...rangeParams(), level, state: st, limit, offset }));
    main.append(table([{ label: t("level"), render: (x) => pill(x.level) }, { label: t("score"), key: "score" },
      { label: t("incident"), render: (x) => h("a", { class: "incident-link", href: "#/incident/" + encodeURIComponent(x.incident_id) }, x.title) },
      { label: t("stages"), render: (x) => stageLine(x.stages) }, { label: t("alerts_n"), key: "alert_count" },
      { label: t("affected"), render: (x) => x.affected_assets.slice(0, 4).join(", ") + (x.affected_assets.length > 4 ? " …" : ""), mono: true },
      { label: t("state"), render: (x) => t("istate_" + x.state) }, { label: t("first_seen"), render: (x) => fmtTime(x.first_seen) }, { label: t("last_seen"), render: (x) => fmtTime(x.last_seen) }],
    page.rows, { id: (x) => x.incident_id }), pager(page.total, limit, offset, (o) => { location.hash = "#/incidents" + qs({ level, state: st, offset: o }); }));
  } catch (e) { fail(main, e); }
}
async function incidentDetail(id) {
  const main = shell("incidents");
  let d; try { d = await api("/api/incidents/" + encodeURIComponent(id)); } catch (e) { return fail(main, e); }
  const x = d.incident; const canMove = state.me.role !== "viewer";
  const stateSel = h("select", { id: "incident-state", disabled: !canMove }, INCIDENT_STATES.map((s) => h("option", { value: s, selected: s === x.state }, t("istate_" + s))));
  const comment = h("input", { id: "incident-comment", size: 40, placeholder: t("comment"), disabled: !canMove });
  const result = h("span", { id: "incident-result", class: "ok" });
  const save = h("button", { class: "primary", id: "incident-save", disabled: !canMove, onclick: async () => {
    try { await api("/api/incidents/" + encodeURIComponent(id) + "/state", { method: "POST", body: { state: stateSel.value, comment: comment.value || null } }); result.textContent = t("done"); setTimeout(() => incidentDetail(id), 300); }
    catch (e) { result.textContent = e.message; result.className = "error"; } } }, t("save"));
  const timeline = h("div", { class: "chart", id: "incident-timeline" });
  const fmtSel = h("select", { id: "containment-format", disabled: !canMove }, CONTAINMENT_FORMATS.map((f) => h("option", { value: f }, t("fmt_" + f))));
  const exportResult = h("span", { id: "containment-result" });
  const exportBtn = h("button", { id: "containment-export", disabled: !canMove, onclick: async () => {
    try {
      const r = await fetch("/api/containment", { method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json", "X-CSRF-Token": state.me.csrf },
        body: JSON.stringify({ format: fmtSel.value, incident_ids: [id] }) });
      if (!r.ok) throw new Error((await r.json()).detail || r.statusText);
      const name = (r.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
      const a = h("a", { href: URL.createObjectURL(await r.blob()), download: name ? name[1] : "containment" }); document.body.append(a); a.click(); a.remove();
      exportResult.textContent = t("done"); exportResult.className = "ok";
    } catch (e) { exportResult.textContent = e.message; exportResult.className = "error"; } } }, t("containment_export"));
  const caseLink = d.case ? h("a", { id: "incident-case", class: "button", href: "#/case/" + encodeURIComponent(d.case.case_id) }, `${t("case")} ${d.case.case_id}`)
    : h("button", { id: "open-case", class: "primary", disabled: !canMove, onclick: async () => {
      try { const c = await api("/api/incidents/" + encodeURIComponent(id) + "/case", { method: "POST" }); location.hash = "#/case/" + encodeURIComponent(c.case_id); }
      catch (e) { result.textContent = e.message; result.className = "error"; } } }, t("open_case"));
  const reportLang = language() === "en" ? "en" : "zh-CN";
  const reportHref = (f) => "/api/reports/incident/" + encodeURIComponent(id) + qs({ lang: reportLang, format: f });
  main.append(h("div", { class: "toolbar" }, h("a", { href: "#/incidents" }, "← " + t("back")), caseLink,
    h("a", { id: "incident-report", href: reportHref("html"), target: "_blank" }, t("report_html")), h("a", { id: "incident-report-pdf", href: reportHref("pdf") }, t("report_pdf"))),
    h("div", { class: "grid" },
      card(t("incident"), "span7", h("h2", { id: "incident-title" }, pill(x.level), " ", x.title),
        h("p", {}, `${t("score")}: ${x.score} · ${t("state")}: ${t("istate_" + x.state)} · ${fmtTime(x.first_seen)} — ${fmtTime(x.last_seen)}`),
        h("h3", {}, t("stages")), stageLine(x.stages), timeline),
      card(t("triage"), "span5", h("div", { class: "toolbar" }, stateSel, comment, save, result),
        h("h3", {}, t("containment")), h("div", { class: "toolbar" }, fmtSel, exportBtn, exportResult),
        h("h3", {}, t("entities")), h("p", { class: "mono" }, x.entities.join("  ")),
        h("h3", {}, t("affected")), h("p", { class: "mono" }, x.affected_assets.join("  ") || "—"),
        x.subscribers.length ? [h("h3", {}, t("subscriber")), h("p", { class: "mono" }, x.subscribers.join("  "))] : null,
        x.slices.length ? [h("h3", {}, t("snssai")), h("p", { class: "mono" }, x.slices.join("  "))] : null,
        h("h3", {}, t("audit_trail")), table([{ label: t("time"), render: (a) => fmtTime(new Date(a.ts_ms).toISOString()) }, { label: t("user"), key: "username" }, { label: t("detail"), render: (a) => JSON.stringify(a.detail) }], d.audit)),
      card(t("alerts"), "span12", table([{ label: t("time"), render: (a) => fmtTime(a.first_seen) }, { label: t("level"), render: (a) => pill(a.level) },
        { label: t("signature"), render: (a) => h("a", { href: "#/alert/" + encodeURIComponent(a.alert_id) }, a.signature) }, { label: t("source"), key: "src_ip", mono: true }, { label: t("target"), key: "dst_ip", mono: true },
        { label: t("score"), key: "score" }], d.alerts)),
      card(t("posture_impact"), "span12", h("div", { id: "incident-posture" }, d.posture.changes.length
        ? [table(levelChangeColumns, d.posture.changes), h("h3", {}, t("posture_now")), table(scopeColumns, d.posture.scopes)]
        : h("p", { class: "dim" }, t("posture_unmoved")))),
      card(t("notifications"), "span12", h("div", { id: "incident-notifications" }, d.notifications.length
        ? table(notificationColumns.filter((c) => c.label !== t("title")), d.notifications) : h("p", { class: "dim" }, t("nothing"))))));
  // the stages on a time axis: one bar per tactic, from its first to its last alert
  const rows = x.stages.map((s) => tactic(s.tactic));
  chart(timeline, { tooltip: { trigger: "item", renderMode: "richText" }, grid: { left: 150, right: 20, top: 10, bottom: 30 },
    xAxis: { type: "time" }, yAxis: { type: "category", data: rows, inverse: true },
    series: [{ type: "custom", renderItem: (params, api_) => { const y = api_.coord([api_.value(0), api_.value(2)]); const e = api_.coord([api_.value(1), api_.value(2)]); const hgt = api_.size([0, 1])[1] * 0.5;
      return { type: "rect", shape: { x: y[0], y: y[1] - hgt / 2, width: Math.max(e[0] - y[0], 4), height: hgt }, style: { fill: GRADE_COLORS[x.level] } }; },
      encode: { x: [0, 1], y: 2 }, data: x.stages.map((s, i) => [s.first_seen_ns / 1e6, s.last_seen_ns / 1e6, i, s.alerts]) }] });
}

// -- cases: an incident taken up, with playbook checklists, evidence, notes and one timeline --
async function cases() {
  const params = hashParams(); const offset = Number(params.get("offset") || 0); const limit = 50; const st = params.get("state") || "";
  const main = shell("cases");
  const stateSel = h("select", { name: "state", onchange: (e) => { location.hash = "#/cases" + qs({ state: e.target.value }); } },
    ["", ...INCIDENT_STATES].map((s) => h("option", { value: s, selected: s === st }, s ? t("istate_" + s) : t("state"))));
  main.append(h("div", { class: "toolbar" }, stateSel));
  try {
    const page = await api("/api/cases" + qs({ state: st, limit, offset }));
    main.append(h("div", { id: "case-list" }, table([{ label: t("case"), render: (c) => h("a", { class: "case-link", href: "#/case/" + encodeURIComponent(c.case_id) }, c.case_id), mono: true },
      { label: t("level"), render: (c) => c.level ? pill(c.level) : "" }, { label: t("incident"), key: "title" }, { label: t("state"), render: (c) => t("istate_" + c.state) },
      { label: t("assignee"), key: "assignee" }, { label: t("checklist"), render: (c) => `${c.steps_done} / ${c.steps}` },
      { label: t("updated"), render: (c) => fmtTime(new Date(c.updated_ms).toISOString()) }], page.rows)),
    pager(page.total, limit, offset, (o) => { location.hash = "#/cases" + qs({ state: st, offset: o }); }));
  } catch (e) { fail(main, e); }
}
async function caseDetail(id) {
  const main = shell("cases");
  let d; try { d = await api("/api/cases/" + encodeURIComponent(id)); } catch (e) { return fail(main, e); }
  const c = d.case; const x = d.incident; const canWork = state.me.role !== "viewer"; const lang = language() === "en" ? "en" : "zh-CN";
  const result = h("span", { id: "case-result", class: "ok" });
  const send = async (path, body) => {
    try { await api("/api/cases/" + encodeURIComponent(id) + "/" + path, { method: "POST", body }); result.textContent = t("done"); result.className = "ok"; setTimeout(() => caseDetail(id), 200); }
    catch (e) { result.textContent = e.message; result.className = "error"; }
  };
  const stateSel = h("select", { id: "case-state", disabled: !canWork }, INCIDENT_STATES.map((s) => h("option", { value: s, selected: s === c.state }, t("istate_" + s))));
  const stateComment = h("input", { id: "case-state-comment", size: 30, placeholder: t("comment"), disabled: !canWork });
  const assignSel = h("select", { id: "case-assignee", disabled: !canWork }, d.users.map((u) => h("option", { value: u, selected: u === c.assignee }, u)));
  const checklists = d.playbooks.map((b) => h("div", { class: "playbook", "data-playbook": b.id }, h("h4", {}, b.title[lang]),
    h("ul", { class: "checklist" }, b.steps.map((s) => h("li", {}, h("label", {}, h("input", { type: "checkbox", "data-step": s.key, checked: s.done, disabled: !canWork,
      onchange: (e) => send("checks", { step: s.key, done: e.target.checked }) }), " ", s.text[lang],
      s.done && s.updated_by ? h("span", { class: "dim" }, ` — ${s.updated_by} ${fmtTime(new Date(s.updated_ms).toISOString())}`) : null))))));
  const note = h("textarea", { id: "case-note", rows: 3, cols: 60, placeholder: t("note"), disabled: !canWork });
  const evKind = h("select", { id: "evidence-kind", disabled: !canWork }, ["alert", "flow", "pcap", "file"].map((k) => h("option", { value: k }, t("evidence_" + k))));
  const evRef = h("input", { id: "evidence-ref", size: 24, placeholder: t("evidence_ref"), disabled: !canWork });
  const evLabel = h("input", { id: "evidence-label", size: 20, placeholder: t("label"), disabled: !canWork });
  const sourceName = (e) => t("source_" + e.source);
  main.append(h("div", { class: "toolbar" }, h("a", { href: "#/cases" }, "← " + t("back")), h("a", { href: "#/incident/" + encodeURIComponent(c.incident_id) }, t("incident") + " →"),
    h("a", { id: "case-report", href: "/api/reports/incident/" + encodeURIComponent(c.incident_id) + qs({ lang, format: "html" }), target: "_blank" }, t("report_html")),
    h("a", { id: "case-report-pdf", href: "/api/reports/incident/" + encodeURIComponent(c.incident_id) + qs({ lang, format: "pdf" }) }, t("report_pdf"))),
    h("div", { class: "grid" },
      card(`${t("case")} ${c.case_id}`, "span7", h("h2", { id: "case-title" }, pill(x.level), " ", x.title),
        h("p", {}, `${t("score")}: ${x.score} · ${t("state")}: ${t("istate_" + c.state)} · ${t("assignee")}: ${c.assignee || "—"} · ${t("opened_by")}: ${c.created_by}`),
        h("h3", {}, t("stages")), stageLine(x.stages),
        h("h3", {}, t("checklist")), h("div", { id: "case-checklists" }, checklists)),
      card(t("triage"), "span5", h("div", { class: "toolbar" }, stateSel, stateComment, h("button", { id: "case-state-save", class: "primary", disabled: !canWork, onclick: () => send("state", { state: stateSel.value, comment: stateComment.value || null }) }, t("save"))),
        h("div", { class: "toolbar" }, t("assignee"), assignSel, h("button", { id: "case-assign", disabled: !canWork, onclick: () => send("assign", { assignee: assignSel.value }) }, t("save"))),
        h("h3", {}, t("notes")), note, h("div", { class: "toolbar" }, h("button", { id: "case-add-note", class: "primary", disabled: !canWork, onclick: () => note.value.trim() && send("notes", { text: note.value }) }, t("add_note")), result),
        h("h3", {}, t("evidence")), h("div", { class: "toolbar" }, evKind, evRef, evLabel, h("button", { id: "evidence-add", disabled: !canWork, onclick: () => evRef.value.trim() && send("evidence", { kind: evKind.value, ref: evRef.value.trim(), label: evLabel.value || null }) }, t("add"))),
        h("div", { id: "case-evidence" }, table([{ label: t("kind"), render: (e) => t("evidence_" + e.kind) },
          { label: t("evidence_ref"), render: (e) => e.href ? h("a", { href: e.href }, e.ref) : e.kind === "alert" ? h("a", { href: "#/alert/" + encodeURIComponent(e.ref) }, e.ref) : e.ref, mono: true },
          { label: t("detail"), render: (e) => [e.summary || "", e.label ? ` (${e.label})` : ""] }, { label: t("user"), key: "added_by" }], d.evidence))),
      card(t("timeline"), "span12", h("div", { id: "case-timeline" }, table([{ label: t("time"), render: (e) => fmtTime(e.ts) },
        { label: t("source"), render: (e) => h("span", { class: "src-" + e.source }, sourceName(e)) }, { label: t("kind"), render: (e) => t("event_" + e.kind) },
        { label: t("user"), render: (e) => e.user || "" }, { label: t("detail"), key: "text" }], d.timeline)))));
}

// -- reports: the situational report of a day or week, as HTML or PDF, in either language --
async function reports() {
  const main = shell("reports");
  const lang = language() === "en" ? "en" : "zh-CN";
  const period = h("select", { id: "report-period" }, ["day", "week"].map((p) => h("option", { value: p }, t("report_" + p))));
  const end = h("input", { id: "report-end", type: "datetime-local", title: t("report_end") });
  const langSel = h("select", { id: "report-lang" }, [["zh-CN", "中文"], ["en", "English"]].map(([v, l]) => h("option", { value: v, selected: v === lang }, l)));
  const fmt = h("select", { id: "report-format" }, ["html", "pdf"].map((f) => h("option", { value: f }, f.toUpperCase())));
  const link = h("a", { id: "report-link", class: "button", target: "_blank" }, t("report_get"));
  const update = () => { link.href = "/api/reports/situation" + qs({ period: period.value, lang: langSel.value, format: fmt.value, end: end.value ? new Date(end.value).toISOString() : "" }); };
  [period, end, langSel, fmt].forEach((el) => el.addEventListener("change", update)); update();
  main.append(card(t("report_situation"), "span12", h("p", { class: "dim" }, t("report_hint")),
    h("div", { class: "toolbar" }, period, t("report_end"), end, langSel, fmt, link)));
}

// -- sensors, audit --
async function sensors() {
  const main = shell("sensors");
  try {
    const list = await api("/api/sensors");
    main.append(table([{ label: t("sensor"), key: "sensor" }, { label: t("capture_source"), key: "source", mono: true }, { label: t("pps"), key: "packets_per_s" },
      { label: t("packets"), render: (s) => fmtNumber(s.packets) }, { label: t("bytes"), render: (s) => fmtBytes(s.bytes) }, { label: t("decode_errors"), render: (s) => `${fmtNumber(s.decode_errors)} (${(100 * s.error_rate).toFixed(2)}%)` },
      { label: t("drops"), render: (s) => s.drops == null ? "—" : `${fmtNumber(s.drops)} (${(100 * s.drop_rate).toFixed(3)}%)` }, { label: t("lag"), render: (s) => `${fmtNumber(Math.round(s.lag_s))} s` }, { label: t("last_seen_ago"), render: (s) => fmtTime(s.last_seen) }, { label: t("batches"), key: "batches" }], list));
  } catch (e) { fail(main, e); }
}
// Re-identification for a lawful investigation: the identities a warrant names, with the pseudonym key, give the
// pseudonyms to follow. The key is sent once and cleared from the form; the server keeps neither it nor the identities.
function reidentifyForm(onDone) {
  const caseRef = h("input", { id: "reid-case", size: 28, required: true, minlength: 3, maxlength: 200, placeholder: t("case_ref") });
  const key = h("input", { id: "reid-key", type: "password", size: 28, required: true, autocomplete: "off", placeholder: t("pseudonym_key") });
  const ids = h("textarea", { id: "reid-ids", rows: 3, cols: 34, required: true, placeholder: t("identities_hint") });
  const kind = h("select", { id: "reid-kind", title: t("identity_kind") }, ["", "imsi", "msisdn", "imei"].map((k) => h("option", { value: k }, k ? k.toUpperCase() : t("auto"))));
  const out = h("div", { id: "reid-result" });
  const submit = async (e) => {
    e.preventDefault();
    const list = ids.value.split(/[\s,;]+/).filter(Boolean);
    try {
      const r = await api("/api/admin/reidentify", { method: "POST", body: { case: caseRef.value, key: key.value, identities: list, kind: kind.value } });
      key.value = "";
      out.replaceChildren(h("p", { class: r.found ? "" : "error" }, `${t("found")}: ${r.found} / ${list.length}`, r.found ? "" : " — " + t("check_key")),
        table([{ label: t("identity"), render: (x) => list[x.index] }, { label: t("pseudonym"), key: "pseudonym", mono: true }, { label: t("sessions"), key: "sessions" },
          { label: t("messages"), render: (x) => Object.entries(x.messages).map(([k, v]) => `${k} ${fmtNumber(v)}`).join(", ") },
          { label: "", render: (x) => x.sessions || Object.keys(x.messages).length ? h("a", { href: "#/hunt" + qs({ q: "subscriber=" + x.pseudonym }) }, t("hunt_flows")) : "" }], r.rows, { id: (x) => x.pseudonym }));
      onDone();
    } catch (err) { out.replaceChildren(h("p", { class: "error" }, `${t("error")}: ${err.message}`)); }
  };
  return card(t("reidentify"), "span12", h("p", { class: "dim" }, t("reidentify_hint")),
    h("form", { class: "toolbar", id: "reid-form", onsubmit: submit }, caseRef, key, ids, kind, h("button", { class: "primary", type: "submit", id: "reid-go" }, t("reidentify_go"))), out);
}
async function audit() {
  const main = shell("audit");
  const log_ = h("div", { id: "audit-log" });
  const refresh = async () => {
    const log = await api("/api/audit?limit=200");
    log_.replaceChildren(table([{ label: t("time"), render: (x) => fmtTime(new Date(x.ts_ms).toISOString()) }, { label: t("user"), key: "username" }, { label: t("action"), key: "action" },
      { label: t("target"), key: "target", mono: true }, { label: t("detail"), render: (x) => x.detail == null ? "" : JSON.stringify(x.detail) }, { label: t("client"), key: "client_ip" }], log.rows));
  };
  main.append(h("div", { class: "grid" }, reidentifyForm(() => refresh().catch((e) => fail(main, e))), card(t("audit_trail"), "span12", log_)));
  try { await refresh(); } catch (e) { fail(main, e); }
}

// -- notifications: what went out to whom, and whether it arrived --
const notificationColumns = [{ label: t("created"), render: (x) => fmtTime(x.created) }, { label: t("level"), render: (x) => pill(x.level) },
  { label: t("kind"), render: (x) => t("kind_" + x.kind) }, { label: t("title"), render: (x) => x.kind === "incident" || x.kind === "escalation"
    ? h("a", { href: "#/incident/" + encodeURIComponent(x.subject_id) }, x.title) : x.kind === "alert" ? h("a", { href: "#/alert/" + encodeURIComponent(x.subject_id) }, x.title)
    : `${t("kind_digest")}: ${fmtNumber(x.covers)}` },
  { label: t("channel"), render: (x) => `${x.channel} (${x.channel_type})` }, { label: t("route"), key: "route" },
  { label: t("status"), render: (x) => h("span", { class: "nstatus nstatus-" + x.status }, t("nstatus_" + x.status)) },
  { label: t("attempts"), key: "attempts" }, { label: t("latency_ms"), key: "latency_ms" }, { label: t("last_error"), key: "last_error" }];
async function notifications() {
  const params = hashParams(); const offset = Number(params.get("offset") || 0); const limit = 50;
  const st = params.get("status") || "";
  const main = shell("notifications");
  const statusSel = h("select", { name: "status", id: "notification-status" }, ["", ...NOTIFY_STATUSES].map((s) => h("option", { value: s, selected: s === st }, s ? t("nstatus_" + s) : t("status"))));
  main.append(h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); location.hash = "#/notifications" + qs({ status: statusSel.value }); } },
    statusSel, h("button", { class: "primary", type: "submit" }, t("apply"))));
  try {
    const [settings, page] = await Promise.all([api("/api/notifications/settings" + qs(rangeParams())),
      api("/api/notifications" + qs({ ...rangeParams(), status: st, limit, offset }))]);
    main.append(notifySettings(settings), h("h3", {}, t("notify_history")));
    main.append(h("p", { id: "notification-counts" }, NOTIFY_STATUSES.filter((s) => page.by_status[s]).map((s) => `${t("nstatus_" + s)} ${fmtNumber(page.by_status[s])}`).join(" · ") || t("nothing")),
      h("div", { id: "notification-history" }, table(notificationColumns, page.rows, { id: (x) => x.notification_id })), pager(page.total, limit, offset, (o) => { location.hash = "#/notifications" + qs({ status: st, offset: o }); }));
  } catch (e) { fail(main, e); }
}

// who is told about what, over which channel (keys masked by the sensor), and how each channel delivers
const listed = (xs, key) => xs.length ? xs.map((x) => key ? t(key + x) : x).join(", ") : t("any");
function notifySettings(d) {
  if (!d.routes.length) return h("p", { id: "notify-routes", class: "dim" }, t("notify_none"));
  const routes = table([{ label: t("route"), key: "route" }, { label: t("kinds"), render: (r) => listed(r.kinds, "kind_") },
    { label: t("levels"), render: (r) => h("span", {}, ...r.levels.map(pill)) }, { label: t("categories"), render: (r) => listed(r.categories) },
    { label: t("assets_scope"), render: (r) => listed(r.assets) }, { label: t("notify_first"), render: (r) => r.notify.join(", ") },
    { label: t("escalation"), render: (r) => r.escalate.map((e) => t("esc_step").replace("{0}", fmtNumber(e.after_min)).replace("{1}", e.channels.join(", "))).join("; ") }],
  d.routes, { id: (r) => r.route });
  const channels = table([{ label: t("channel"), render: (c) => `${c.name} (${c.type})` }, { label: t("channel_target"), key: "target", mono: true },
    { label: t("msg_language"), key: "language" }, { label: t("signed"), render: (c) => c.signed == null ? "" : c.signed ? "✓" : "✗" },
    { label: t("used_by"), render: (c) => c.routes.join(", ") },
    { label: t("deliveries"), render: (c) => NOTIFY_STATUSES.filter((s) => c.by_status[s]).map((s) => `${t("nstatus_" + s)} ${fmtNumber(c.by_status[s])}`).join(" · ") || t("nothing") },
    { label: t("last_error"), render: (c) => c.last_error ? `${fmtTime(c.last_error.at)} ${c.last_error.error}` : "" }],
  d.channels, { id: (c) => c.name });
  return h("div", { class: "grid" },
    card(t("notify_routes"), "span12", h("div", { id: "notify-routes" }, ...d.errors.map((e) => h("p", { class: "error" }, `${t("notify_error")}: ${e}`)),
      h("p", { class: "dim" }, `${t("notify_loaded")} ${fmtTime(d.loaded_at)}`), routes)),
    card(t("notify_channels"), "span12", h("div", { id: "notify-channels" }, channels)));
}

// -- threat intelligence: the feeds, and what they matched --
const counts = (o) => Object.entries(o || {}).map(([k, v]) => `${k} ${fmtNumber(v)}`).join(" · ");
async function intel() {
  const main = shell("intel");
  try {
    const d = await api("/api/intel" + qs(rangeParams()));
    const feeds = d.feeds.length ? table([{ label: t("feed"), key: "feed" }, { label: t("format"), key: "format" },
      { label: t("enabled"), render: (x) => x.enabled ? "✓" : "—" }, { label: t("indicators"), render: (x) => fmtNumber(x.indicators) },
      { label: t("by_type"), render: (x) => counts(x.by_type) }, { label: t("expired"), render: (x) => fmtNumber(x.expired) },
      { label: t("skipped"), render: (x) => counts(x.skipped) }, { label: t("loaded_at"), render: (x) => fmtTime(x.loaded_at) },
      { label: t("error"), render: (x) => x.error ? h("span", { class: "nstatus nstatus-failed" }, x.error) : "" }], d.feeds, { id: (x) => x.feed })
      : h("p", { class: "dim" }, t("intel_none"));
    const matches = d.matches.length ? table([{ label: t("level"), render: (x) => pill(x.level) }, { label: t("indicator"), key: "indicator", mono: true },
      { label: t("feed"), key: "feed" }, { label: t("host"), render: (x) => h("a", { href: "#/alerts" + qs({ detector: "intel", ip: x.host }) }, x.host || "") },
      { label: t("alerts"), render: (x) => h("a", { href: "#/alerts" + qs({ detector: "intel", text: x.indicator }) }, fmtNumber(x.alerts)) }], d.matches)
      : h("p", { class: "dim" }, t("nothing"));
    main.append(h("div", { class: "grid" }, card(t("intel_feeds"), "span12", h("div", { id: "intel-feeds" }, feeds)),
      card(t("intel_matches"), "span12", h("p", { id: "intel-levels" }, GRADES.filter((g) => d.by_level[g]).map((g) => `${t("level_" + g)} ${fmtNumber(d.by_level[g])}`).join(" · ")),
        h("div", { id: "intel-matches" }, matches))));
  } catch (e) { fail(main, e); }
}

// -- routing --
function route() {
  document.documentElement.lang = language();
  if (!state.me) return loginPage();
  const path = location.hash.replace(/^#\/?/, "").split("?")[0];
  const [page, arg] = path.split("/");
  if (page !== "overview" && page !== "" && state.events) { state.events.close(); state.events = null; }
  const pages = { overview, incidents, cases, reports, alerts, hunt, fiveg, assets, rules, intel, sensors, notifications, audit };
  if (page === "alert" && arg) return alertDetail(decodeURIComponent(arg));
  if (page === "incident" && arg) return incidentDetail(decodeURIComponent(arg));
  if (page === "case" && arg) return caseDetail(decodeURIComponent(arg));
  return (pages[page] || overview)();
}
async function render() {
  if (!state.me) { try { state.me = await (await fetch("/api/me", { credentials: "same-origin" })).json(); if (!state.me.username) state.me = null; } catch (e) { state.me = null; } }
  route();
}
window.addEventListener("hashchange", route);
render();
