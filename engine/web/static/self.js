// The subscriber's own page, opened from a signed link: plain words, two actions.
"use strict";
const token = location.pathname.split("/").pop();
const $ = id => document.getElementById(id);
let keys = {};

function say(text, bad) { $("msg").textContent = text; $("msg").className = "msg " + (bad ? "bad" : "ok"); }

async function load() {
  const v = await tg.get("/api/self/" + token);
  tg.csrf = v.csrf;
  keys = {addon: tg.key()};
  $("sid").textContent = v.subscriber_id;
  $("money").textContent = tg.money(v.money, v.currency);
  $("usage").textContent = v.usage_words;
  $("runout").textContent = v.runout_line;
  $("buckets").replaceChildren(...v.buckets.map(b => tg.el("p", {},
    `${b.id}: ${tg.units(b.remaining, b.unit)} left of ${tg.units(b.initial, b.unit)}` +
    (b.expiry_ms ? `, until ${tg.time(b.expiry_ms)}` : ""))));
  $("addons").replaceChildren(...v.addons.map(a => tg.el("p", {},
    `${a.name}: ${tg.units(a.units, a.unit)} for ${tg.money(a.price, v.currency)} `,
    tg.el("button", {onclick: () => act("addon", {addon_id: a.id, key: keys.addon})}, "Buy"))));
  $("cap").textContent = v.cap ? `Your cap is ${tg.money(v.cap, v.currency)} per cycle; ` +
    `${tg.money(v.cycle_spent, v.currency)} spent so far.` : "You have no spending cap.";
}

async function act(action, data) {
  try {
    await tg.post(`/api/self/${token}/${action}`, data);
    say("Done.");
    await load();
  } catch (e) { say(e.message, true); }
}

$("nps").replaceChildren(...Array.from({length: 11}, (_, n) => tg.el("button",
  {class: "plain", id: "nps-" + n, onclick: async () => {
    try { await tg.post(`/api/self/${token}/nps`, {score: n}); say("Thank you for your answer."); }
    catch (e) { say(e.message, true); }
  }}, String(n))));
$("cap-btn").addEventListener("click", () => act("cap", {cap: $("cap-amount").value}));
load().catch(e => say(e.message, true));
