// Segments and churn risk: filters build a segment from the census's index; send a campaign
// or an offer to it through the lifecycle.
"use strict";
const STATES = ["PREACTIVE", "ACTIVE", "GRACE", "SUSPENDED", "TERMINATED"];
const BANDS = ["high", "medium", "low"];
const ACTIVITIES = {active: "used in the last 7 days", idle: "last use 7-30 days ago",
                    dormant: "no use for 30+ days", never: "never used"};
const REASONS = {topup: "no recent top-up", usage: "usage fell", grace: "in GRACE",
                 refused: "grants refused", nps: "NPS detractor", offers: "offers not taken"};
const LIMIT = 25;
const $ = id => document.getElementById(id);
let offset = 0, last = null, sendKey = tg.key();

function boxes(id, name, values, labels) {
  const el = $(id), was = new Set(picked(name));
  el.replaceChildren(...values.map(v => tg.el("label", {class: "check"},
    tg.el("input", {type: "checkbox", name, value: v, ...(was.has(v) ? {checked: ""} : {})}),
    " " + (labels ? `${v} (${labels[v]})` : v))));
}

function picked(name) {
  return [...document.querySelectorAll(`input[name=${name}]:checked`)].map(i => i.value);
}

function filter() {
  return {states: picked("states"), plans: picked("plans"), bands: picked("bands"),
          activities: picked("activities")};
}

function say(text, bad) { $("send-msg").textContent = text; $("send-msg").className = "msg " + (bad ? "bad" : "ok"); }

async function load() {
  const f = filter(), q = new URLSearchParams({offset, limit: LIMIT});
  for (const [k, v] of Object.entries(f)) if (v.length) q.set(k, v.join(","));
  const d = await tg.get("/api/segments?" + q);
  last = d;
  $("census").textContent = d.census_ms ? `(ranked by the census of ${tg.time(d.census_ms)})` : "(no census yet)";
  boxes("f-plans", "plans", d.plans);
  $("count").textContent = tg.num(d.count);
  $("bands").textContent = BANDS.map(b => tg.num(d.by_band[b])).join(" / ");
  $("base").textContent = BANDS.map(b => tg.num(d.base[b])).join(" / ");
  tg.bars($("b-why"), Object.fromEntries(Object.entries(d.reasons_in_bands).map(([k, n]) => [REASONS[k] || k, n])));
  $("send-words").textContent = `Segment: ${d.words} (${tg.num(d.count)} lines at the census).`;
  const names = Object.keys(d.campaigns);
  $("campaign").replaceChildren(...names.map(n => tg.el("option", {value: n},
    n + (d.campaigns[n].offer ? " (with an offer)" : ""))));
  $("send-btn").disabled = !names.length;
  if (!names.length) say("No lifecycle process offers a campaign for segments: add a [[lifecycle.campaigns]] with signal = \"segment\".", true);
  $("sends").replaceChildren(d.sends.length ? tg.table(["asked", "campaign", "segment", "by", "status", "lines", "queued"],
    d.sends.map(s => [tg.time(s.requested_ms), s.campaign, s.words, s.by, s.status, tg.num(s.lines), tg.num(s.queued)]))
    : tg.el("div", {class: "muted"}, "no sends yet"));
  $("page").textContent = d.count ? `${offset + 1}-${offset + d.lines.length} of ${tg.num(d.count)}` : "";
  $("prev-btn").disabled = offset === 0;
  $("next-btn").disabled = offset + d.lines.length >= d.count;
  $("lines").replaceChildren(d.lines.length ? tg.table(["line", "state", "plan", "activity", "risk", "why"],
    d.lines.map(l => [tg.el("a", {href: "/care?s=" + encodeURIComponent(l.subscriber_id)}, l.subscriber_id),
      l.state, l.plan, l.activity, tg.el("span", {class: {high: "bad", medium: "warn", low: "ok"}[l.band]},
        `${l.score} ${l.band}`),
      l.reasons.map(r => `${r.text} (+${r.points})`).join("; ") || "no risk signal"]))
    : tg.el("div", {class: "muted"}, "no line in this segment"));
}

$("filters").addEventListener("submit", ev => {
  ev.preventDefault(); offset = 0; say("");
  load().catch(e => say(e.message, true));
});
$("prev-btn").addEventListener("click", () => { offset = Math.max(0, offset - LIMIT); load(); });
$("next-btn").addEventListener("click", () => { offset += LIMIT; load(); });
$("send-btn").addEventListener("click", async () => {
  const campaign = $("campaign").value;
  if (!confirm(`Send ${campaign} to ${last.words} (${last.count} lines)?`)) return;
  try {
    const r = await tg.post("/api/segments/send", {filter: filter(), campaign, key: sendKey});
    say(r.queued ? `${campaign} queued for ${r.words}: the lifecycle sends it (quiet hours and opt-outs apply).`
                 : "Already sent (the same form twice).");
    sendKey = tg.key();
    await load();
  } catch (e) { say(e.message, true); }
});

(async () => {
  await tg.whoami();
  boxes("f-states", "states", STATES);
  boxes("f-bands", "bands", BANDS);
  boxes("f-activities", "activities", Object.keys(ACTIVITIES), ACTIVITIES);
  await load();
  setInterval(() => { if (last && last.sends.some(s => s.status !== "done")) load(); }, 2000);
})();
