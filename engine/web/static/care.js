// Customer care: find a line, see everything about it, act on it.
"use strict";
const STATES = ["PREACTIVE", "ACTIVE", "GRACE", "SUSPENDED", "TERMINATED"];
let current = null, keys = {};
const $ = id => document.getElementById(id);

function say(text, bad) { $("msg").textContent = text; $("msg").className = "msg " + (bad ? "bad" : "ok"); }

async function open(sid) {
  const v = await tg.get("/api/subscribers/" + encodeURIComponent(sid));
  current = v;
  history.replaceState(null, "", "/care?s=" + encodeURIComponent(sid));
  keys = {topup: tg.key(), addon: tg.key()};
  $("view").hidden = false;
  $("sid").textContent = v.subscriber_id;
  $("acct").textContent = `account ${v.account_id} · plan ${v.plan.id} v${v.plan.version}`;
  $("state").textContent = v.state;
  $("runout").textContent = v.runout_line;
  $("money").textContent = tg.money(v.money, v.currency);
  $("reserved").textContent = tg.money(v.reserved, v.currency);
  $("cap").textContent = v.cap ? `${tg.money(v.cap)} / ${tg.money(v.cycle_spent)}` : `none / ${tg.money(v.cycle_spent)}`;
  $("churn").textContent = `${v.churn.score} (${v.churn.band})`;
  $("churn").className = "v " + {high: "bad", medium: "warn", low: "ok"}[v.churn.band];
  const run = Object.fromEntries(v.runout.map(r => [r.id, r]));
  $("buckets").replaceChildren(tg.table(["bucket", "left", "used", "reserved", "expires", "runs out"],
    v.buckets.map(b => [b.id, tg.units(b.remaining, b.unit), tg.units(b.used, b.unit),
      tg.units(b.reserved, b.unit), tg.time(b.expiry_ms),
      run[b.id] && run[b.id].at_ms ? tg.time(run[b.id].at_ms) :
        (run[b.id] && run[b.id].expires_first ? "expires first" : "-")])));
  $("reasons").replaceChildren(v.churn.reasons.length ? tg.table(["points", "reason"],
    v.churn.reasons.map(r => [r.points, r.text])) : tg.el("div", {class: "muted"}, "no risk signal"));
  $("sessions").replaceChildren(v.sessions.length ? tg.table(["session", "rating group", "from", "units", "money"],
    v.sessions.map(s => [s.session_id, s.rating_group, s.bucket || "money", tg.num(s.units), tg.money(s.amount)]))
    : tg.el("div", {class: "muted"}, "none"));
  $("records").replaceChildren(v.records.length ? tg.table(["time", "kind", "line", "units", "money"],
    v.records.map(r => [tg.time(r.time_ms), r.kind, r.subscriber_id, r.unit ? tg.units(r.units, r.unit) : "", tg.money(r.money)]))
    : tg.el("div", {class: "muted"}, "none in the recent history"));
  $("events").replaceChildren(v.events.length ? tg.table(["time", "kind", "detail"],
    v.events.map(e => [tg.time(e.time_ms), e.kind, [e.bucket, e.threshold ? e.threshold + " %" : "", e.detail].filter(x => x).join(" ")]))
    : tg.el("div", {class: "muted"}, "none in the recent history"));
  $("notifications").replaceChildren(v.notifications.length ? tg.table(["time", "rule", "channel", "status"],
    v.notifications.map(n => [tg.time(n.time_ms), n.rule, n.channel, n.status]))
    : tg.el("div", {class: "muted"}, "none"));
  $("addon").replaceChildren(...v.addons.map(a => tg.el("option", {value: a.id},
    `${a.name} (${tg.money(a.price, v.currency)})`)));
  $("state-sel").replaceChildren(...STATES.map(s => tg.el("option", {value: s}, s)));
  $("state-sel").value = v.state;
}

async function act(action, data) {
  try {
    const r = await tg.post(`/api/subscribers/${encodeURIComponent(current.subscriber_id)}/${action}`, data);
    say(action + ": " + (r.applied === false ? "already done (same form sent again)" : "done"));
    await open(current.subscriber_id);
    return r;
  } catch (e) { say(e.message, true); }
}

$("search").addEventListener("submit", async ev => {
  ev.preventDefault();
  const q = $("q").value.trim();
  try {
    const r = await tg.get("/api/search?q=" + encodeURIComponent(q));
    $("found").hidden = false;
    if (!r.found.length) { $("found").replaceChildren("No subscriber or account " + q); return; }
    $("found").replaceChildren(tg.table(["subscriber", "account", "state"], r.found.map(f =>
      [tg.el("a", {href: "#", onclick: e => { e.preventDefault(); open(f.subscriber_id); }}, f.subscriber_id),
       f.account_id, f.state])));
    if (r.found.length === 1) await open(r.found[0].subscriber_id);
  } catch (e) { say(e.message, true); }
});
$("topup-btn").addEventListener("click", () => act("topup", {amount: $("topup-amount").value, key: keys.topup}));
$("addon-btn").addEventListener("click", () => act("addon", {addon_id: $("addon").value, key: keys.addon}));
$("state-btn").addEventListener("click", () => act("state", {state: $("state-sel").value}));
$("cap-btn").addEventListener("click", () => act("cap", {cap: $("cap-amount").value}));
$("link-btn").addEventListener("click", async () => {
  try {
    const r = await tg.post(`/api/subscribers/${encodeURIComponent(current.subscriber_id)}/link`);
    $("link").href = r.url; $("link").textContent = location.origin + r.url;
  } catch (e) { say(e.message, true); }
});

(async () => {
  await tg.whoami();
  const s = new URLSearchParams(location.search).get("s");
  if (s) { $("q").value = s; await open(s); }
})();
