// The review page (agent/review.py serves it). Plain JS, no libraries: the page works offline.
// State comes from GET /api/state; every change is one POST that answers with the new state,
// whose preview_url is the re-rendered edit.
"use strict";

const $ = (id) => document.getElementById(id);
const COLOUR = { kept: "#4caf50", repeated: "#ff9800", partial: "#cddc39", cut: "#d0d0d0" };
const STRIP = 24;   // phrase strip at the top of the waveform (CSS px)
const HANDLES = 16; // cut-edge handles at the bottom
const GRAB = 7;     // how near (px) a press must be to a cut edge to drag it

let S = null;        // the server's state
let drag = null;     // {edge, to} while a cut edge is dragged
let busy = false;    // one change at a time: each answer is the base of the next
let sent = 0;        // performance.now() of the last change sent
const timings = [];  // per change: ms until the answer, ms until the new preview can play
window.review = { state: () => S, timings };

// ---- talking to the server -------------------------------------------------------------
async function api(path, body) {
  const opt = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const r = await fetch(path, opt);
  let j;
  try { j = await r.json(); } catch (e) { j = { error: `${r.status} ${r.statusText}` }; }
  return { status: r.status, body: j };
}

async function change(path, body) {
  if (busy) return;
  busy = true;
  document.body.classList.add("busy");
  status("rendering the preview…");
  sent = performance.now();
  try {
    const r = await api(path, body);
    if (r.status !== 200) { status(r.body.error || r.body.conflict || "failed", "error"); return; }
    timings.push({ version: r.body.version, answer_ms: performance.now() - sent, playable_ms: null });
    setState(r.body);
  } catch (e) {
    status(`the review server did not answer (${e})`, "error");
  } finally {
    busy = false;
    document.body.classList.remove("busy");
  }
}

function status(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = "status" + (kind ? " " + kind : "");
}

// ---- state -> page ---------------------------------------------------------------------
function setState(s) {
  S = s;
  $("song").textContent = s.raw_name;
  const n = { kept: 0, cut: 0, repeated: 0, partial: 0 };
  s.phrases.forEach((p) => { n[p.status] += 1; });
  $("facts").textContent =
    `raw ${fmt(s.duration)}, edit ${fmt(s.out_duration)} (keeps ${Math.round(100 * s.keep_ratio)} %), ` +
    `${s.tempo.toFixed(1)} BPM ${s.beats_per_bar}/4, ${s.phrases.length} phrases: ` +
    `${n.kept} kept, ${n.repeated} repeated, ${n.partial} partly kept, ${n.cut} cut`;
  if (!$("name").value) $("name").value = s.name;
  $("undo").disabled = !s.can_undo;
  $("reset").disabled = !s.changed;
  phraseButtons();
  loadPreview();
  drawStatic();
  draw();
  document.body.dataset.version = String(s.version);
  document.body.dataset.ready = "1";
}

function fmt(sec) {
  const m = Math.floor(sec / 60), s = sec - 60 * m;
  return `${m}:${s.toFixed(1).padStart(4, "0")}`;
}

function loadPreview() {
  const a = $("edit");
  if (a.getAttribute("src") === S.preview_url) return;
  const wasPlaying = !a.paused, at = a.currentTime, version = S.version;
  a.setAttribute("src", S.preview_url);
  a.load();
  $("edit-label").textContent = version === 0 ? "(as the tool made it)"
    : `(your correction ${version}, rendered in ${(S.render_s || 0).toFixed(2)} s)`;
  a.addEventListener("canplay", () => {
    const t = timings.find((x) => x.version === version);
    if (t && t.playable_ms === null) {
      t.playable_ms = performance.now() - sent;
      status(`preview ready in ${(t.playable_ms / 1000).toFixed(2)} s`, "ok");
    }
    if (wasPlaying) { a.currentTime = Math.min(at, Math.max(0, a.duration - 0.1)); a.play().catch(() => {}); }
  }, { once: true });
}

function phraseButtons() {
  const box = $("phrases");
  box.textContent = "";
  S.phrases.forEach((p) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = p.status;
    b.dataset.phrase = String(p.index);
    b.textContent = `${p.index + 1}: ${p.status}${p.effect ? " + fx" : ""}`;
    b.title = `phrase ${p.index + 1}, ${fmt(p.t0)}–${fmt(p.t1)}: click to ${p.status === "cut" ? "keep" : "cut"} it`;
    b.addEventListener("click", () => change("/api/toggle", { phrase: p.index }));
    box.appendChild(b);
  });
}

// ---- drawing ---------------------------------------------------------------------------
const wave = $("wave"), line = $("timeline");
const layer = document.createElement("canvas"); // the waveform without playheads and drag

function fit(c) {
  const dpr = window.devicePixelRatio || 1, w = c.clientWidth, h = c.clientHeight;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
  }
  const ctx = c.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { ctx, w, h };
}

const xOf = (t, w) => (t / S.duration) * w;

function drawStatic() {
  const { w, h } = fit(wave);
  layer.width = wave.width; layer.height = wave.height;
  const ctx = layer.getContext("2d");
  const dpr = wave.width / w;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const top = STRIP, bottom = h - HANDLES, mid = (top + bottom) / 2, amp = (bottom - top) / 2 - 2;
  // phrases: the strip and a wash over the waveform
  S.phrases.forEach((p) => {
    const x0 = xOf(p.t0, w), x1 = xOf(p.t1, w);
    ctx.fillStyle = COLOUR[p.status];
    ctx.fillRect(x0, 0, x1 - x0, STRIP);
    ctx.globalAlpha = 0.28;
    ctx.fillRect(x0, top, x1 - x0, bottom - top);
    ctx.globalAlpha = 1;
    if (x1 - x0 > 28) {
      ctx.fillStyle = p.status === "kept" ? "#fff" : "#222";
      ctx.font = "11px system-ui, sans-serif";
      ctx.textBaseline = "middle";
      const label = x1 - x0 > 70 ? `${p.index + 1} ${p.status}` : String(p.index + 1);
      ctx.fillText(label, x0 + 4, STRIP / 2);
    }
  });
  // bar lines (thin) and phrase lines (dark)
  const phraseStarts = new Set(S.phrases.map((p) => p.start));
  S.bars.forEach((b) => {
    const x = Math.round(xOf(S.beats[b], w)) + 0.5;
    ctx.strokeStyle = phraseStarts.has(b) ? "#555" : "#c8c8c8";
    ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(x, phraseStarts.has(b) ? 0 : top); ctx.lineTo(x, bottom); ctx.stroke();
  });
  // the waveform: min/max of the server's peaks under each pixel column
  const lo = S.peaks.min, hi = S.peaks.max, n = lo.length;
  ctx.fillStyle = "#263238";
  for (let x = 0; x < w; x++) {
    const i0 = Math.floor((x / w) * n), i1 = Math.max(i0 + 1, Math.floor(((x + 1) / w) * n));
    let a = 1, b = -1;
    for (let i = i0; i < i1 && i < n; i++) { if (lo[i] < a) a = lo[i]; if (hi[i] > b) b = hi[i]; }
    if (b < a) continue;
    const y0 = mid - b * amp, y1 = mid - a * amp;
    ctx.fillRect(x, y0, 1, Math.max(1, y1 - y0));
  }
  // cut edges with their handles
  S.edges.forEach((e) => {
    const x = xOf(S.beats[e], w);
    ctx.strokeStyle = "#d32f2f"; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, bottom); ctx.stroke();
    ctx.fillStyle = "#d32f2f";
    ctx.beginPath(); ctx.moveTo(x, bottom); ctx.lineTo(x - 6, h); ctx.lineTo(x + 6, h); ctx.closePath(); ctx.fill();
  });
  // seconds along the bottom
  ctx.fillStyle = "#777"; ctx.font = "10px system-ui, sans-serif"; ctx.textBaseline = "alphabetic";
  const step = [5, 10, 15, 30, 60, 120, 300].find((s) => (s / S.duration) * w > 60) || 600;
  for (let t = step; t < S.duration; t += step) ctx.fillText(fmt(t).replace(/\.0$/, ""), xOf(t, w) + 2, h - 3);
}

function draw() {
  if (!S) return;
  const { ctx, w, h } = fit(wave);
  ctx.clearRect(0, 0, w, h);
  ctx.drawImage(layer, 0, 0, w, h);
  if (drag && drag.to !== drag.edge) {
    const x = xOf(S.beats[drag.to], w);
    ctx.strokeStyle = "#d32f2f"; ctx.setLineDash([5, 4]); ctx.lineWidth = 2;
    ctx.beginPath(); ctx.moveTo(x, STRIP); ctx.lineTo(x, h); ctx.stroke(); ctx.setLineDash([]);
  }
  const raw = $("raw"), edit = $("edit");
  if (raw.currentTime > 0) playhead(ctx, xOf(raw.currentTime, w), h, "#1565c0");
  const rt = rawTimeOfEdit(edit.currentTime);
  if (rt !== null && edit.currentTime > 0) playhead(ctx, xOf(rt, w), h, "#8e24aa");
  drawTimeline();
}

function playhead(ctx, x, h, colour) {
  ctx.strokeStyle = colour; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.stroke();
}

// where in the raw the edit is playing at output time t (seconds), or null
function rawTimeOfEdit(t) {
  const seg = S.timeline.find((s) => t >= s.out_t0 && t < s.out_t1);
  if (!seg) return null;
  const f = (t - seg.out_t0) / Math.max(1e-9, seg.out_t1 - seg.out_t0);
  return seg.reversed ? seg.raw_t1 - f * (seg.raw_t1 - seg.raw_t0) : seg.raw_t0 + f * (seg.raw_t1 - seg.raw_t0);
}

function drawTimeline() {
  const { ctx, w, h } = fit(line);
  ctx.clearRect(0, 0, w, h);
  const total = Math.max(1e-3, S.out_duration);
  S.timeline.forEach((s, i) => {
    const x0 = (s.out_t0 / total) * w, x1 = (s.out_t1 / total) * w;
    ctx.fillStyle = i % 2 ? "#a9c6ee" : "#5b8fd6";
    ctx.fillRect(x0, 6, Math.max(1, x1 - x0), h - 12);
    if (x1 - x0 > 44) {
      ctx.fillStyle = "#0d2140"; ctx.font = "10px system-ui, sans-serif"; ctx.textBaseline = "middle";
      ctx.fillText(`${s.raw_t0.toFixed(0)}–${s.raw_t1.toFixed(0)}s${s.reversed ? " rev" : ""}`, x0 + 3, h / 2);
    }
  });
  const edit = $("edit");
  if (edit.currentTime > 0) playhead(ctx, (edit.currentTime / total) * w, h, "#8e24aa");
}

// ---- the mouse -------------------------------------------------------------------------
function pointer(ev) {
  const r = wave.getBoundingClientRect();
  const x = ev.clientX - r.left;
  return { x, t: Math.min(S.duration, Math.max(0, (x / r.width) * S.duration)), w: r.width };
}

function edgeAt(x, w) {
  let best = null, dist = GRAB;
  S.edges.forEach((e) => { const d = Math.abs(xOf(S.beats[e], w) - x); if (d <= dist) { best = e; dist = d; } });
  return best;
}

function nearestBar(t) {
  let best = S.bars[0];
  S.bars.forEach((b) => { if (Math.abs(S.beats[b] - t) < Math.abs(S.beats[best] - t)) best = b; });
  return best;
}

wave.addEventListener("mousedown", (ev) => {
  if (!S || busy) return;
  const p = pointer(ev), e = edgeAt(p.x, p.w);
  drag = e === null ? { edge: null } : { edge: e, to: e };
  ev.preventDefault();
});

wave.addEventListener("mousemove", (ev) => {
  if (!S) return;
  const p = pointer(ev);
  if (drag && drag.edge !== null) { drag.to = nearestBar(p.t); draw(); return; }
  wave.style.cursor = edgeAt(p.x, p.w) !== null ? "ew-resize" : "";
});

window.addEventListener("mouseup", (ev) => {
  if (!S || !drag) return;
  const d = drag;
  drag = null;
  if (d.edge !== null) {
    if (d.to !== d.edge) change("/api/move_edge", { edge: d.edge, to: d.to }); else draw();
    return;
  }
  if (ev.target !== wave) return;
  const p = pointer(ev);
  if (ev.shiftKey) { const raw = $("raw"); raw.currentTime = p.t; raw.play().catch(() => {}); return; }
  const ph = S.phrases.find((q) => p.t >= q.t0 && p.t < q.t1) || S.phrases[S.phrases.length - 1];
  change("/api/toggle", { phrase: ph.index });
});

// ---- buttons ---------------------------------------------------------------------------
$("undo").addEventListener("click", () => change("/api/undo", {}));
$("reset").addEventListener("click", () => change("/api/reset", {}));

async function save(overwrite) {
  $("confirm").hidden = true;
  const name = $("name").value.trim();
  status("saving…");
  const r = await api("/api/save", { name, overwrite });
  if (r.status === 200) {
    const b = r.body;
    status(`Saved ${b.plan} (${b.plan_action}); raw recording ${b.raw} (${b.raw_action}). ` +
      "make align reads it as a training pair.", "ok");
  } else if (r.status === 409 && r.body.overwritable) {
    $("confirm-text").textContent = r.body.conflict + " ";
    $("confirm").hidden = false;
    status("");
  } else {
    status(r.body.conflict || r.body.error || "saving failed", "error");
  }
}
$("save").addEventListener("click", () => save(false));
$("confirm-yes").addEventListener("click", () => save(true));
$("confirm-no").addEventListener("click", () => { $("confirm").hidden = true; status("not saved", ""); });

// ---- playheads, resizing, start --------------------------------------------------------
function tick() {
  draw();
  if (!$("raw").paused || !$("edit").paused) requestAnimationFrame(tick);
}
["play", "seeked", "timeupdate"].forEach((k) => {
  $("raw").addEventListener(k, () => requestAnimationFrame(tick));
  $("edit").addEventListener(k, () => requestAnimationFrame(tick));
});
window.addEventListener("resize", () => { if (S) { drawStatic(); draw(); } });

api("/api/state").then((r) => {
  if (r.status !== 200) { status(r.body.error || "cannot load the edit", "error"); return; }
  setState(r.body);
}).catch((e) => status(`the review server did not answer (${e})`, "error"));
