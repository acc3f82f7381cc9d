// The operator's dashboard: one full load, then live updates over server-sent events.
"use strict";
const KEEP = 360;  // points of 10 s: one hour
const STATES = ["PREACTIVE", "ACTIVE", "GRACE", "SUSPENDED", "TERMINATED"];
const COLORS = ["#2563eb", "#c0392b", "#1e8e3e", "#b7791f", "#7c3aed", "#0891b2"];
let points = new Map();  // t -> {rate, p50_ms, p99_ms, money_per_hour, topups_per_hour}
const charts = {};

function chart(id, labels) {
  const el = document.getElementById(id);
  const opts = {width: el.clientWidth || 420, height: 200, series: [{},
    ...labels.map((l, i) => ({label: l, stroke: COLORS[i % COLORS.length], width: 1.5,
                              spanGaps: true}))],
    axes: [{}, {size: 60}], legend: {live: false}};
  charts[id] = new uPlot(opts, [[], ...labels.map(() => [])], el);
}

function merge(series) {
  series.t.forEach((t, i) => points.set(t, {rate: series.rate[i], p50: series.p50_ms[i],
    p99: series.p99_ms[i], money: series.money_per_hour[i], topups: series.topups_per_hour[i]}));
  const ts = [...points.keys()].sort((a, b) => a - b);
  for (const t of ts.slice(0, Math.max(0, ts.length - KEEP))) points.delete(t);
}

function draw() {
  const ts = [...points.keys()].sort((a, b) => a - b);
  const col = k => ts.map(t => points.get(t)[k]);
  charts["c-rate"].setData([ts, col("rate")]);
  charts["c-lat"].setData([ts, col("p50"), col("p99")]);
  charts["c-money"].setData([ts, col("money"), col("topups")]);
}

let trend = [];
function drawBase(full, base) {
  if (full) trend = full;
  else if (base.time_ms && (!trend.length || trend[trend.length - 1].t < Math.floor(base.time_ms / 1000)))
    trend.push({t: Math.floor(base.time_ms / 1000), ...base});  // a census since the load
  charts["c-base"].setData([trend.map(x => x.t), ...STATES.map(s => trend.map(x => x[s] || 0))]);
}

function pick(totals, prefix) {
  const out = {};
  for (const [k, n] of Object.entries(totals)) if (k.startsWith(prefix)) out[k.slice(prefix.length)] = n;
  return out;
}

function show(d) {
  const t = d.totals, sum = o => Object.values(o).reduce((a, b) => a + b, 0);
  document.getElementById("answered").textContent = tg.num(sum(pick(t, "req:")));
  const last = d.series.rate.filter(x => x !== null);
  document.getElementById("rate").textContent = last.length ? last[last.length - 1].toFixed(1) : "0";
  const refused = pick(t, "req:");
  delete refused.success;
  document.getElementById("refused").textContent = tg.num(sum(refused));
  document.getElementById("charged").textContent = tg.money(t["money:usage"] || 0);
  document.getElementById("topups").textContent =
    `${tg.num(t["records:top_up"] || 0)} · ${tg.money(t["money:top_up"] || 0)}`;
  const o = d.offers;
  const conv = o.made ? ` (${Math.round(100 * (o.bought || 0) / o.made)} %)` : "";
  document.getElementById("offers").textContent = `${tg.num(o.made)} / ${tg.num(o.bought)}${conv}`;
  document.getElementById("outbox").textContent =
    `${tg.num(d.lifecycle.waiting)} / ${tg.num(d.lifecycle.dead_letters)}`;
  tg.bars(document.getElementById("b-refused"), refused);
  const grants = pick(t, "grant:");
  delete grants.success;
  tg.bars(document.getElementById("b-grants"), grants);
  const base = Object.fromEntries(STATES.map(s => [s, d.base[s] || 0]));
  tg.bars(document.getElementById("b-base"), base);
  document.getElementById("census").textContent =
    d.base.time_ms ? "(counted " + tg.time(d.base.time_ms) + ")" : "(not counted yet)";
  tg.bars(document.getElementById("b-ntf"), pick(t, "ntf:"));
  tg.bars(document.getElementById("b-ev"), pick(t, "ev:"));
  tg.bars(document.getElementById("b-to"), pick(t, "to:"));
  tg.bars(document.getElementById("b-offers"), pick(o, "bought:"));
  document.getElementById("revenue").textContent = tg.money(o.revenue || 0);
  campaigns(d.campaigns);
  merge(d.series);
  draw();
  drawBase(d.base_trend, d.base);
}

function campaigns(list) {
  const el = document.getElementById("campaigns");
  el.replaceChildren(list.length ? tg.table(["campaign", "reach", "offers", "bought", "revenue", "NPS answers", "NPS"],
    list.map(c => [c.name, tg.num(c.reach), tg.num(c.offers), tg.num(c.bought), tg.money(c.revenue),
                   tg.num(c.answers), c.nps === null ? "-" : c.nps]))
    : tg.el("div", {class: "muted"}, "no campaign has reached anyone yet"));
  const dist = Array(11).fill(0);
  for (const c of list) c.distribution.forEach((n, s) => { dist[s] += n; });
  const total = dist.reduce((a, b) => a + b, 0);
  const promoters = dist[9] + dist[10], detractors = dist.slice(0, 7).reduce((a, b) => a + b, 0);
  document.getElementById("nps").textContent = total ?
    `(NPS ${Math.round(100 * (promoters - detractors) / total)} over ${tg.num(total)} answers)` : "";
  tg.bars(document.getElementById("b-nps"), Object.fromEntries(dist.map((n, s) => [String(s), n])), true);
}

async function start() {
  await tg.whoami();
  chart("c-rate", ["answers/s"]);
  chart("c-lat", ["p50", "p99"]);
  chart("c-money", ["charged", "topped up"]);
  chart("c-base", STATES);
  show(await tg.get("/api/dashboard"));
  const live = document.getElementById("live");
  const es = new EventSource("/api/dashboard/stream");
  es.onmessage = m => { show(JSON.parse(m.data)); live.textContent = "updated " + new Date().toLocaleTimeString(); };
  es.onerror = () => { live.textContent = "(reconnecting...)"; };
}
start();
