// Shared helpers of the Tollgate pages: JSON calls with the CSRF token, formatting.
"use strict";
const tg = {
  csrf: "",
  async get(url) {
    const r = await fetch(url, {credentials: "same-origin"});
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  },
  async post(url, data) {
    const r = await fetch(url, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": tg.csrf},
      body: JSON.stringify(data || {})});
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  },
  key() {  // an idempotency key for one form: sent twice, applied once
    const a = new Uint8Array(12); crypto.getRandomValues(a);
    return Array.from(a, b => b.toString(16).padStart(2, "0")).join("");
  },
  money(micros, cur) { return (micros / 1e6).toLocaleString(undefined,
    {minimumFractionDigits: 2, maximumFractionDigits: 2}) + (cur ? " " + cur : ""); },
  num(n) { return Number(n || 0).toLocaleString(); },
  time(ms) { return ms ? new Date(ms).toLocaleString() : "-"; },
  units(n, unit) {
    if (unit === "OCTETS") return (n / 1e6).toLocaleString(undefined, {maximumFractionDigits: 1}) + " MB";
    if (unit === "SECONDS") return Math.round(n / 60).toLocaleString() + " min";
    return tg.num(n) + " units";
  },
  el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k instanceof Node ? k : String(k));
    return e;
  },
  table(head, rows) {
    return tg.el("table", {}, tg.el("tr", {}, ...head.map(h => tg.el("th", {}, h))),
      ...rows.map(r => tg.el("tr", {}, ...r.map(c => tg.el("td", {}, c)))));
  },
  bars(el, counts, ordered) {  // a bar chart of {label: n}, biggest first unless ordered
    el.replaceChildren();
    const entries = Object.entries(counts || {}).filter(([, n]) => n > 0);
    if (!ordered) entries.sort((a, b) => b[1] - a[1]);
    if (!entries.length) { el.append(tg.el("div", {class: "muted"}, "nothing yet")); return; }
    const max = Math.max(...entries.map(([, n]) => n));
    for (const [k, n] of entries) {
      el.append(tg.el("div", {class: "row"}, tg.el("span", {}, k),
        tg.el("div", {class: "bar", style: `width:${(100 * n / max).toFixed(1)}%`}),
        tg.el("span", {class: "n"}, tg.num(n))));
    }
  },
  async whoami() {
    const me = await tg.get("/api/me");
    tg.csrf = me.csrf;
    document.getElementById("who").textContent = me.operator;
    if (me.open) document.getElementById("open").hidden = false;
    return me;
  },
};
