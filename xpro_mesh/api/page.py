"""``GET /``: a live page of the mesh, served by the agent itself.

One self-contained HTML document (no external scripts or fonts: proxies
often have no route to a CDN) that polls ``/v1/top`` every second and
draws what it returns: the mesh's figures, two charts (packets in and
drops per second over the last five minutes; the heaviest destinations
against T_F2) and the tables of destinations, sources and pairs. Every
figure is an element with an ``id`` so that a browser test can read the
rendered numbers (tests/test_live_page.py).
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["PAGE", "routes"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>xpro-mesh</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1.2em;background:#fafafa;color:#222}
h1{font-size:1.3em;margin:0 0 .6em}
.cards{display:flex;gap:1em;flex-wrap:wrap}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.6em}
.charts{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
canvas{background:#fff;border:1px solid #ddd;border-radius:6px}
table{border-collapse:collapse;background:#fff;margin:.4em 1em 1em 0;vertical-align:top}
td,th{border:1px solid #ddd;padding:.2em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}
.drop,.over{color:#b00020;font-weight:600}.pass,.under{color:#1b5e20}
.tables{display:flex;flex-wrap:wrap}#error{color:#b00020}
</style></head>
<body>
<h1>xpro-mesh <span id="node"></span> <small id="updated"></small> <span id="error"></span></h1>
<div class="cards">
 <div class="card">members alive<b id="mesh-members">-</b></div>
 <div class="card">packets in / s<b id="mesh-pps">-</b></div>
 <div class="card">drops / s<b id="mesh-drops">-</b></div>
 <div class="card">destinations over T_F2<b id="mesh-over">-</b></div>
 <div class="card">pairs<b id="mesh-pairs">-</b></div>
 <div class="card">T_F1 / T_F2 (pps)<b id="thresholds">-</b></div>
</div>
<div class="charts">
 <canvas id="rates" width="560" height="220"></canvas>
 <canvas id="dests" width="560" height="220"></canvas>
</div>
<div class="tables">
 <table id="members"><caption>members</caption><thead><tr><th>node</th><th>state</th>
  <th>pkts/s</th><th>drops/s</th></tr></thead><tbody></tbody></table>
 <table id="destinations"><caption>destinations</caption><thead><tr><th>destination</th>
  <th>pps</th><th>clients</th><th>verdict</th></tr></thead><tbody></tbody></table>
 <table id="pairs"><caption>top talkers (pairs)</caption><thead><tr><th>source</th>
  <th>destination</th><th>pps</th><th>verdict</th></tr></thead><tbody></tbody></table>
</div>
<script>
"use strict";
const history = [];
const el = id => document.getElementById(id);
function fmt(x){return x>=1e6?(x/1e6).toFixed(1)+"M":x>=1e4?(x/1e3).toFixed(1)+"k":String(x)}
function rows(id, items, cells){
  const body = el(id).tBodies[0]; body.textContent = "";
  for (const it of items){
    const tr = body.insertRow();
    for (const [text, cls] of cells(it)){
      const td = tr.insertCell(); td.textContent = text; if (cls) td.className = cls;
    }
  }
}
function axes(ctx, w, h, title, ymax){
  ctx.clearRect(0,0,w,h); ctx.fillStyle="#222"; ctx.font="13px system-ui";
  ctx.fillText(title, 10, 16); ctx.strokeStyle="#ccc"; ctx.strokeRect(50, 25, w-60, h-50);
  ctx.fillText(fmt(Math.round(ymax)), 4, 32); ctx.fillText("0", 36, h-25);
}
function drawRates(){
  const c = el("rates"), ctx = c.getContext("2d"), w = c.width, h = c.height;
  const ymax = Math.max(1, ...history.map(p => Math.max(p.pps, p.drops)));
  axes(ctx, w, h, "packets in / s (blue), drops / s (red), last 5 min", ymax);
  for (const [key, color] of [["pps","#1565c0"],["drops","#b00020"]]){
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    history.forEach((p, i) => {
      const x = 50 + (w-60) * i / Math.max(1, history.length-1);
      const y = h - 25 - (h-50) * p[key] / ymax;
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  }
}
function drawDests(doc){
  const c = el("dests"), ctx = c.getContext("2d"), w = c.width, h = c.height;
  const top = doc.destinations.slice(0, 8), tf2 = doc.thresholds.t_f2;
  const ymax = Math.max(tf2 * 1.2, ...top.map(d => d.pps));
  axes(ctx, w, h, "heaviest destinations (pps); line: T_F2", ymax);
  const bw = (w-60) / Math.max(1, top.length);
  top.forEach((d, i) => {
    const bh = (h-50) * d.pps / ymax;
    ctx.fillStyle = d.verdict === "over" ? "#b00020" : "#2e7d32";
    ctx.fillRect(55 + i*bw, h-25-bh, bw-10, bh);
    ctx.fillStyle = "#222"; ctx.font = "11px system-ui";
    ctx.fillText(d.dst, 55 + i*bw, h-10);
  });
  const y = h - 25 - (h-50) * tf2 / ymax;
  ctx.strokeStyle = "#ff8f00"; ctx.setLineDash([6,4]); ctx.beginPath();
  ctx.moveTo(50, y); ctx.lineTo(w-10, y); ctx.stroke(); ctx.setLineDash([]);
}
function render(doc){
  el("node").textContent = "as seen by " + doc.node_id;
  el("updated").textContent = new Date(doc.time * 1000).toLocaleTimeString();
  el("mesh-members").textContent = doc.mesh.members_alive;
  el("mesh-pps").textContent = doc.mesh.packets_in_per_s;
  el("mesh-drops").textContent = doc.mesh.drops_per_s;
  el("mesh-over").textContent = doc.mesh.destinations_over_t_f2;
  el("mesh-pairs").textContent = doc.mesh.pairs;
  el("thresholds").textContent = doc.thresholds.t_f1 + " / " + doc.thresholds.t_f2;
  rows("members", doc.members, m => [[m.node_id], [m.state, m.state === "alive" ? "pass" : "drop"],
    [m.packets_in_per_s], [m.drops_per_s]]);
  rows("destinations", doc.destinations,
    d => [[d.dst], [d.pps], [d.clients], [d.verdict, d.verdict]]);
  rows("pairs", doc.pairs, p => [[p.src], [p.dst], [p.pps], [p.verdict, p.verdict]]);
  history.push({pps: doc.mesh.packets_in_per_s, drops: doc.mesh.drops_per_s});
  if (history.length > 300) history.shift();
  drawRates(); drawDests(doc);
  document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
}
async function poll(){
  try {
    const resp = await fetch("v1/top?limit=20", {cache: "no-store"});
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    render(await resp.json()); el("error").textContent = "";
  } catch (e) { el("error").textContent = "agent not reachable: " + e.message; }
  setTimeout(poll, 1000);
}
poll();
</script>
</body></html>
"""


def routes() -> list[web.RouteDef]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE,
            content_type="text/html",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP},
        )

    return [web.get("/", page)]


# Only this page's own inline script and style, and fetches to the agent.
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:"
)
