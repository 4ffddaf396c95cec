// momentbus review: the page's script (plain JS + SVG, no framework, no network beyond this
// server). Data: /api/status, /api/triggers (paged), /api/lanes (downsampled), /api/events (SSE).
// Every string from the run is put in the page with textContent, never as HTML.
"use strict";

const CFG = {
  token: document.body.dataset.token || "",
  pageSize: parseInt(document.body.dataset.pageSize || "50", 10),
  pollMs: parseInt(document.body.dataset.pollMs || "500", 10),
};
const SVGNS = "http://www.w3.org/2000/svg";
const LEFT = 176;   // px for row and lane labels (timeline and lanes share the x scale)
const RIGHT = 14;

const state = {
  status: null, page: null, lanes: null, selected: null, detail: null,
  offset: 0, lastLanes: 0, lanesTimer: null,
};

// ---- helpers -------------------------------------------------------------------------------

function withToken(url) {
  if (!CFG.token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(CFG.token);
}

async function api(path, params) {
  const q = new URLSearchParams(params || {});
  const url = withToken(path + (q.toString() ? "?" + q : ""));
  const res = await fetch(url, {cache: "no-store"});
  if (!res.ok) throw new Error(path + ": HTTP " + res.status);
  return res.json();
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.setAttribute("class", v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  if (text !== undefined) node.textContent = text;
  return node;
}

function title(node, text) { node.append(svg("title", {}, text)); return node; }

const sec = (ns) => (ns === null || ns === undefined) ? "?" : (ns / 1e9).toFixed(2);
const fmt = (v) => {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(+v.toFixed(4));
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "object") { const s = JSON.stringify(v); return s.length > 140 ? s.slice(0, 137) + "…" : s; }
  return String(v);
};
const fmtMs = (v) => v === null || v === undefined ? "–" : (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + " ms";

function flatten(obj, prefix, out) {
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix ? prefix + "." + k : k;
    if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length <= 24) flatten(v, key, out);
    else out.push([key, v]);
  }
  return out;
}

function fmtField(key, v) {
  if (typeof v === "number" && /(^|_|\.)t(_\w+)?_ns$|_ns$/.test(key) && Math.abs(v) > 1e5) {
    return (v / 1e9).toFixed(3) + " s";
  }
  return fmt(v);
}

// ---- x scale shared by the timeline and the lanes -----------------------------------------

function span() {
  const st = state.status;
  return Math.max(1, (st && st.span_ns) || (state.lanes && state.lanes.t1_ns) || 1);
}
function plotWidth() {
  return Math.max(200, document.getElementById("timeline-wrap").clientWidth - LEFT - RIGHT);
}
// the visible range of source time: the whole source, or a zoom (drag on the timeline)
const view = () => state.view || {t0: 0, t1: span()};
const xOf = (t) => {
  const v = view();
  return LEFT + ((Math.max(v.t0, Math.min(t, v.t1)) - v.t0) / Math.max(1, v.t1 - v.t0)) * plotWidth();
};
const tOf = (x) => {
  const v = view();
  return v.t0 + (Math.max(0, Math.min(x - LEFT, plotWidth())) / plotWidth()) * (v.t1 - v.t0);
};
const visible = (a, b) => b >= view().t0 && a <= view().t1;

function niceStep(totalS, px) {
  const target = totalS / Math.max(2, px / 90);
  const pow = Math.pow(10, Math.floor(Math.log10(target)));
  for (const m of [1, 2, 5, 10]) if (m * pow >= target) return m * pow;
  return 10 * pow;
}

// ---- status --------------------------------------------------------------------------------

async function loadStatus() {
  const st = await api("api/status");
  state.status = st;
  const badge = document.getElementById("state");
  badge.textContent = {finished: "finished", running: "in progress (or cut short)", empty: "nothing yet"}[st.state] || st.state;
  badge.className = "badge " + st.state;
  const box = document.getElementById("problems");
  const list = document.getElementById("problem-list");
  list.replaceChildren(...st.problems.map((p) => el("li", {}, p)));
  box.hidden = st.problems.length === 0;
  const c = st.counts;
  const src = st.source || {};
  const stats = [
    ["source", src.source_id || "?", (src.duration_ns ? (src.duration_ns / 1e9).toFixed(1) + " s" : "") + (src.width ? ` · ${src.width}×${src.height}` : "")],
    ["frames read", c.frames_read, src.frames ? `of ${src.frames}` : ""],
    ["triggers", c.triggers, ""],
    ["clips", c.clips, ""],
    ["dropped frames", c.drops, "", c.drops > 0],
    ["late obs", c.late, "", c.late > 0],
    ["errors", c.errors, "", c.errors > 0],
    ["trace records", c.trace_records, c.malformed_lines ? c.malformed_lines + " malformed" : "", c.malformed_lines > 0],
  ];
  const live = st.source_state || {};
  if (live.connected !== null && live.connected !== undefined) {
    const last = (live.events || []).slice(-1)[0];
    stats.splice(1, 0, ["live source", live.connected ? "connected" : "not connected",
                        `${live.reconnects} reconnect(s)` + (last ? ` · last: ${last.event}` : ""), !live.connected]);
  }
  for (const [link, est] of Object.entries(st.links || {})) {
    stats.push([`clock ${link}`, `${est.offset_ms >= 0 ? "+" : ""}${est.offset_ms.toFixed(1)} ms`,
                (est.rtt_ms !== null ? `rtt ${est.rtt_ms.toFixed(2)} ms` : "") + (est.host ? ` · ${est.host}` : "")]);
  }
  document.getElementById("stats").replaceChildren(...stats.map(([label, value, sub, bad]) =>
    el("div", {class: "stat" + (bad ? " bad" : "")}, el("b", {}, fmt(value)), el("span", {}, label + (sub ? " · " + sub : "")))));
  document.getElementById("errors").textContent = st.errors.length
    ? st.errors.slice(0, 3).map((e) => `${e.component}: ${e.error}`).join(" · ") : "";
  return st;
}

// ---- triggers list -------------------------------------------------------------------------

async function loadTriggers(params) {
  const page = await api("api/triggers", Object.assign({limit: CFG.pageSize, offset: state.offset}, params || {}));
  state.page = page;
  state.offset = page.offset;
  renderTable();
  renderTimeline();
  return page;
}

function clipTag(clip) {
  const label = {ok: "clip", missing: "missing", failed: "failed", pending: "pending", none: "none"}[clip.status] || clip.status;
  return el("span", {class: "tag " + clip.status, title: clip.message || clip.name || ""}, label);
}

function renderTable() {
  const page = state.page;
  const rows = page.items.map((t) => el("tr", {
      "data-index": t.index, class: t.index === state.selected ? "selected" : "",
      onclick: () => select(t.index),
    },
    el("td", {class: "num"}, t.index),
    el("td", {}, t.rule),
    el("td", {class: "num"}, sec(t.t_event_ns)),
    el("td", {class: "num"}, `${sec(t.t_start_ns)}–${sec(t.t_end_ns)}`),
    el("td", {class: "num"}, t.score === null ? "–" : t.score.toFixed(2)),
    el("td", {}, ...(t.missing.length ? t.missing.map((m) => el("span", {class: "tag miss"}, m)) : ["–"])),
    el("td", {}, clipTag(t.clip))));
  document.getElementById("trigger-rows").replaceChildren(...rows);
  document.getElementById("no-triggers").hidden = page.total > 0;
  const first = page.total ? page.offset + 1 : 0;
  document.getElementById("page-info").textContent = `${first}–${page.offset + page.items.length} of ${page.total}`;
  document.getElementById("prev").disabled = page.offset === 0;
  document.getElementById("next").disabled = page.offset + page.limit >= page.total;
}

// ---- timeline ------------------------------------------------------------------------------

function renderTimeline() {
  const root = document.getElementById("timeline");
  const W = LEFT + plotWidth() + RIGHT;
  const page = state.page;
  const lanes = state.lanes;
  // pack the page's trigger windows into sub-rows so labels do not collide; when they cannot
  // all get a free row (many triggers close together) draw compact onset ticks instead
  const rowsEnd = [];
  const placed = [];
  let crowded = false;
  for (const t of (page ? page.items : [])) {
    if (!visible(t.t_start_ns ?? t.t_event_ns, t.t_end_ns ?? t.t_event_ns)) continue;
    const x0 = xOf(t.t_start_ns ?? t.t_event_ns), x1 = Math.max(x0 + 3, xOf(t.t_end_ns ?? t.t_event_ns));
    const need = Math.max(x1, xOf(t.t_event_ns) + 7 * t.rule.length + 8);
    let row = rowsEnd.findIndex((end) => end < x0 - 2);
    if (row < 0) {
      if (rowsEnd.length < 4) { row = rowsEnd.length; rowsEnd.push(0); }
      else { row = rowsEnd.indexOf(Math.min(...rowsEnd)); crowded = true; }
    }
    rowsEnd[row] = Math.max(rowsEnd[row], need);
    placed.push([t, row, x0, x1]);
  }
  if (crowded) {
    // ticks spread over the rows by order, so neighbours stay separately clickable
    placed.forEach((p, i) => { p[1] = i % 4; });
  }
  const nRows = Math.max(1, rowsEnd.length);
  const ROW = 22;
  const yDensity = 6, hDensity = 16;
  const yTrig = yDensity + hDensity + 8, hTrig = nRows * ROW;
  const yDrop = yTrig + hTrig + 8, yLate = yDrop + 16, yAxis = yLate + 22;
  const H = yAxis + 18;
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  root.setAttribute("height", H);
  const kids = [];
  // row backgrounds and labels
  for (const [y, h, label] of [[yDensity, hDensity, "all triggers"], [yTrig, hTrig, "triggers (page)"],
                               [yDrop, 12, "drops"], [yLate, 12, "late obs"]]) {
    kids.push(svg("rect", {class: "rowbg", x: LEFT, y, width: plotWidth(), height: h}));
    kids.push(svg("text", {class: "rowlabel", x: 6, y: y + Math.min(h, 16) - 4}, label));
  }
  // density of every trigger (not only this page): click to jump there
  if (lanes) {
    const n = lanes.bins, counts = lanes.triggers.count, peak = Math.max(1, ...counts);
    const g = svg("g", {class: "density"});
    counts.forEach((c, i) => {
      if (!c) return;
      const t0 = lanes.t0_ns + (i / n) * (lanes.t1_ns - lanes.t0_ns);
      const x = xOf(t0), w = Math.max(2, xOf(lanes.t0_ns + ((i + 1) / n) * (lanes.t1_ns - lanes.t0_ns)) - x);
      const h = 3 + (hDensity - 3) * Math.sqrt(c / peak);
      g.append(title(svg("rect", {x, y: yDensity + hDensity - h, width: w, height: h,
        onclick: () => loadTriggers({at_ns: Math.floor(t0)})}), `${c} trigger(s) near ${sec(t0)} s: click to list them`));
    });
    kids.push(g);
    // drops and late observations
    for (const [key, y, cls] of [["drops", yDrop, "drop"], ["late", yLate, "late"]]) {
      if (!lanes[key].total) kids.push(svg("text", {x: LEFT + 4, y: y + 10, class: "none"}, "none"));
      lanes[key].count.forEach((c, i) => {
        if (!c) return;
        const t = lanes.t0_ns + ((i + 0.5) / n) * (lanes.t1_ns - lanes.t0_ns);
        kids.push(title(svg("line", {class: cls, x1: xOf(t), x2: xOf(t), y1: y, y2: y + 12}),
          `${c} ${key === "drops" ? "dropped frame(s)" : "late observation(s)"} near ${sec(t)} s`));
      });
    }
  }
  // this page's triggers: window, onset, rule (or, when crowded, a tick per onset)
  for (const [t, row, x0, x1] of placed) {
    const y = yTrig + row * ROW + 2;
    const g = svg("g", {class: "trig" + (crowded ? " tick" : "") + (t.index === state.selected ? " selected" : ""),
      "data-index": t.index, onclick: () => select(t.index)});
    const xe = xOf(t.t_event_ns);
    if (crowded) {
      g.append(svg("rect", {class: "hit", x: xe - 3, y, width: 6, height: ROW - 4}));
    } else {
      g.append(svg("rect", {class: "window", x: x0, y, width: x1 - x0, height: ROW - 4, rx: 3}));
    }
    g.append(svg("line", {class: "onset", x1: xe, x2: xe, y1: y, y2: y + ROW - 4}));
    if (!crowded) g.append(svg("text", {x: xe + 4, y: y + 13}, t.rule));
    title(g, `#${t.index} ${t.rule}: onset ${sec(t.t_event_ns)} s, window ${sec(t.t_start_ns)}–${sec(t.t_end_ns)} s, score ${fmt(t.score)}` +
      (t.missing.length ? `, missing ${t.missing.join(", ")}` : ""));
    kids.push(g);
  }
  if (crowded) {
    // the selected trigger's window still shows, under the ticks
    const sel = placed.find(([t]) => t.index === state.selected);
    if (sel) kids.splice(kids.length - placed.length, 0, svg("rect", {class: "selwindow", x: sel[2], y: yTrig, width: sel[3] - sel[2], height: hTrig}));
  }
  // the selected trigger's clip edges (the clip can start earlier: keyframe)
  const d = state.detail;
  if (d && d.clip && d.clip.actual && d.clip.actual.t_start_ns !== undefined) {
    const a = d.clip.actual;
    kids.push(title(svg("rect", {class: "clipspan", x: xOf(a.t_start_ns), y: yTrig, width: Math.max(2, xOf(a.t_end_ns) - xOf(a.t_start_ns)), height: hTrig}),
      `clip ${d.clip.name}: ${sec(a.t_start_ns)}–${sec(a.t_end_ns)} s (actual edges)`));
  }
  // axis
  const v = view(), step = niceStep((v.t1 - v.t0) / 1e9, plotWidth());
  const axis = svg("g", {class: "axis"});
  for (let s = Math.ceil(v.t0 / 1e9 / step) * step; s <= v.t1 / 1e9 + 1e-9; s += step) {
    const x = xOf(s * 1e9);
    axis.append(svg("line", {x1: x, x2: x, y1: yDensity, y2: yAxis - 8}));
    axis.append(svg("text", {x, y: yAxis + 4, "text-anchor": "middle"}, +s.toFixed(3) + ""));
  }
  kids.push(svg("rect", {id: "drag", class: "drag", x: -10, y: yDensity, width: 0, height: yAxis - 8 - yDensity}));
  kids.unshift(axis);
  kids.push(svg("line", {id: "playhead", class: "playhead", x1: -10, x2: -10, y1: yDensity, y2: yAxis - 8, visibility: "hidden"}));
  root.replaceChildren(...kids);
  updatePlayhead();
}

// ---- lanes ---------------------------------------------------------------------------------

async function loadLanes() {
  state.lastLanes = Date.now();
  const bins = Math.max(50, Math.min(1500, Math.floor(plotWidth() / 2)));
  const params = {bins};
  if (state.view) { params.t0_ns = Math.floor(state.view.t0); params.t1_ns = Math.ceil(state.view.t1); }
  state.lanes = await api("api/lanes", params);
  renderLanes();
  renderTimeline();
}

function scheduleLanes() {
  // at most one lanes request every 2 s while a live run streams trace records
  if (state.lanesTimer) return;
  const wait = Math.max(0, 2000 - (Date.now() - state.lastLanes));
  state.lanesTimer = setTimeout(() => { state.lanesTimer = null; loadLanes().catch(showError); }, wait);
}

function renderLanes() {
  const box = document.getElementById("lanes");
  const L = state.lanes;
  if (!L || !L.lanes.length) {
    box.replaceChildren(el("div", {class: "none"}, "No processing-time or sync-delay records (trace.jsonl missing, empty, or traced below level normal)."));
    return;
  }
  const W = LEFT + plotWidth() + RIGHT, H = 46, pad = 5;
  const n = L.bins, dt = (L.t1_ns - L.t0_ns) / n;
  const onsets = (state.page ? state.page.items : []).map((t) => t.t_event_ns).filter((t) => t !== null);
  const nodes = L.lanes.map((lane) => {
    const cls = lane.kind === "sync_delay" ? "sync" : lane.kind === "read" ? "read" : "process";
    const top = Math.max(lane.p99 || 0, 0.001) * 1.25;
    const y = (v) => H - pad - (Math.min(v, top) / top) * (H - 2 * pad);
    const root = svg("svg", {class: "lane " + cls, viewBox: `0 0 ${W} ${H}`, height: H, "data-lane": lane.name});
    root.append(svg("line", {class: "grid", x1: LEFT, x2: LEFT + plotWidth(), y1: H - pad, y2: H - pad}));
    for (const t of onsets.filter((t) => visible(t, t))) root.append(svg("line", {class: "onset", x1: xOf(t), x2: xOf(t), y1: pad, y2: H - pad}));
    // band (max per bin, filled) and mean line; a run of empty bins longer than 5 typical
    // spacings between this lane's records (or 4 bins) breaks both: nothing was processed there
    const inView = lane.count.reduce((a, b) => a + b, 0);
    const gapNs = Math.max(4 * dt, 5 * (L.t1_ns - L.t0_ns) / Math.max(1, inView));
    const segments = [];
    let seg = null, lastT = null;
    for (let i = 0; i < n; i++) {
      if (!lane.count[i]) continue;
      const t = L.t0_ns + (i + 0.5) * dt;
      if (seg === null || t - lastT > gapNs) { seg = []; segments.push(seg); }
      seg.push([xOf(t), y(lane.mean[i]), y(lane.max[i])]);
      lastT = t;
    }
    const base = (H - pad).toFixed(1);
    let band = "", line = "";
    for (const sg of segments) {
      const half = sg.length === 1 ? 1 : 0;  // a lone bin still shows as a 2 px bar
      band += `M${(sg[0][0] - half).toFixed(1)},${base}` +
        sg.map(([x, , yMax], j) => `L${(x - (j === 0 ? half : 0)).toFixed(1)},${yMax.toFixed(1)}`).join("") +
        `L${(sg[sg.length - 1][0] + half).toFixed(1)},${sg[sg.length - 1][2].toFixed(1)}` +
        `L${(sg[sg.length - 1][0] + half).toFixed(1)},${base}Z`;
      line += sg.map(([x, yMean], j) => `${j ? "L" : "M"}${x.toFixed(1)},${yMean.toFixed(1)}`).join("");
    }
    root.append(svg("path", {class: "band", d: band}));
    root.append(svg("path", {class: "mean", d: line}));
    const kind = {process: "processing", read: "read", sync_delay: "sync delay"}[lane.kind] || lane.kind;
    root.append(svg("text", {class: "name", x: 6, y: 16}, lane.name.replace(/^extractor:/, "")));
    root.append(svg("text", {x: 6, y: 31}, `${kind} · p50 ${fmtMs(lane.p50)}`));
    root.append(svg("text", {x: 6, y: 43}, `p99 ${fmtMs(lane.p99)} · max ${fmtMs(lane.peak)}`));
    root.append(svg("text", {x: LEFT + plotWidth() - 2, y: 12, "text-anchor": "end"}, fmtMs(top)));
    title(root, `${lane.name} ${kind}: ${lane.points} records; y axis 0–${fmtMs(top)} (1.25 × p99; higher values clipped)`);
    root.append(svg("line", {class: "playhead lane-playhead", x1: -10, x2: -10, y1: 0, y2: H, visibility: "hidden"}));
    return root;
  });
  box.replaceChildren(...nodes);
  updatePlayhead();
}

// ---- the selected trigger: clip and evidence -----------------------------------------------

async function select(index) {
  state.selected = index;
  const t = await api("api/triggers/" + index);
  state.detail = t;
  renderTable();
  renderTimeline();
  renderDetail(true);
}

function renderDetail(play) {
  const t = state.detail;
  if (!t) return;
  document.getElementById("detail-empty").hidden = true;
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-title").textContent = `#${t.index} ${t.rule}` + (t.rule_kind ? ` (${t.rule_kind})` : "");
  const clip = t.clip;
  const facts = [
    ["onset", `${sec(t.t_event_ns)} s`],
    ["clip window", `${sec(t.t_start_ns)}–${sec(t.t_end_ns)} s (requested, with pre- and post-roll)`],
    ["score", fmt(t.score)],
    ["missing", t.missing.length ? t.missing.join(", ") : "none"],
    ["clip", clip.name ? `${clip.name}` + (clip.actual && clip.actual.t_start_ns !== undefined ? ` · ${sec(clip.actual.t_start_ns)}–${sec(clip.actual.t_end_ns)} s actual` : "") : clip.status],
  ];
  document.getElementById("trigger-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  // evidence: any keys and values (flat today, nested `values` maps tomorrow)
  const cards = t.evidence.map((e, i) => {
    if (!e || typeof e !== "object") return el("div", {class: "ev"}, fmt(e));
    const head = [e.kind || `item ${i + 1}`];
    const sub = [];
    if (e.seq !== undefined) sub.push(`seq ${e.seq}`);
    if (typeof e.t_ns === "number") sub.push(`${(e.t_ns / 1e9).toFixed(3)} s`);
    if (e.component) sub.push(e.component);
    const rest = flatten(Object.fromEntries(Object.entries(e).filter(([k]) => !["kind", "seq", "t_ns", "component"].includes(k))), "", []);
    return el("div", {class: "ev"},
      el("div", {class: "ev-head"}, head.join(" "), " ", el("small", {}, sub.join(" · "))),
      el("dl", {}, ...rest.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, fmtField(k, v))])));
  });
  document.getElementById("evidence").replaceChildren(...(cards.length ? cards : [el("p", {class: "empty"}, "No evidence listed.")]));
  const other = flatten(t.other || {}, "", []);
  document.getElementById("other-fields").replaceChildren(...(other.length ? [el("h3", {}, "Other fields"),
    el("dl", {class: "facts"}, ...other.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, fmtField(k, v))]))] : []));
  // the clip
  const video = document.getElementById("player");
  const msg = document.getElementById("clip-message");
  if (clip.status === "ok") {
    msg.hidden = true;
    const src = withToken("clips/" + encodeURIComponent(clip.name));
    if (video.dataset.src !== src) {
      video.dataset.src = src;
      video.hidden = false;
      const req = clip.requested && clip.requested.t_start_ns, act = clip.actual && clip.actual.t_start_ns;
      const startAt = (typeof req === "number" && typeof act === "number") ? Math.max(0, (req - act) / 1e9) : 0;
      video.onloadedmetadata = () => {
        video.currentTime = Math.min(startAt, Math.max(0, video.duration - 0.1));
        if (play) video.play().catch(() => { /* autoplay refused: the controls are there */ });
      };
      video.src = src;
    } else if (play) {
      video.play().catch(() => {});
    }
  } else {
    video.pause();
    video.removeAttribute("src");
    delete video.dataset.src;
    video.load();
    video.hidden = true;
    msg.hidden = false;
    msg.textContent = clip.message || `clip: ${clip.status}`;
  }
}

function updatePlayhead() {
  const video = document.getElementById("player");
  const d = state.detail;
  const heads = document.querySelectorAll("#playhead, .lane-playhead");
  const ok = d && d.clip && d.clip.status === "ok" && d.clip.actual && typeof d.clip.actual.t_start_ns === "number" && video.dataset.src;
  for (const h of heads) {
    if (!ok) { h.setAttribute("visibility", "hidden"); continue; }
    const x = xOf(d.clip.actual.t_start_ns + video.currentTime * 1e9);
    h.setAttribute("x1", x); h.setAttribute("x2", x); h.setAttribute("visibility", "visible");
  }
}

// ---- live updates --------------------------------------------------------------------------

let lastCounts = null;
async function onUpdate(counts) {
  const first = lastCounts === null;
  const changed = (k) => first || lastCounts[k] !== counts[k];
  const prev = lastCounts;
  lastCounts = counts;
  if (first) return;  // the initial load already has this state
  await loadStatus();
  if (changed("triggers") || changed("clips") || prev.version !== counts.version) {
    await loadTriggers();
    if (state.detail && state.detail.clip.status !== "ok") {
      state.detail = await api("api/triggers/" + state.selected);
      renderDetail(false);
    }
  }
  if (changed("trace_records") || changed("triggers")) scheduleLanes();
}

function startLive() {
  const live = document.getElementById("live");
  if (!window.EventSource) { setInterval(() => refreshAll().catch(showError), 2000); return; }
  const es = new EventSource(withToken("api/events"));
  es.onopen = () => { live.className = "live on"; live.title = "live: updates as files change"; };
  es.onerror = () => { live.className = "live"; live.title = "live updates disconnected (retrying)"; };
  es.addEventListener("update", (ev) => onUpdate(JSON.parse(ev.data)).catch(showError));
}

function showError(err) {
  document.getElementById("errors").textContent = "page: " + err.message;
}

async function refreshAll() {
  await loadStatus();
  await loadTriggers();
  await loadLanes();
}

// ---- wiring --------------------------------------------------------------------------------

document.getElementById("prev").addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - CFG.pageSize); loadTriggers().catch(showError);
});
document.getElementById("next").addEventListener("click", () => {
  state.offset += CFG.pageSize; loadTriggers().catch(showError);
});
document.addEventListener("keydown", (ev) => {
  if (!state.page || !state.page.items.length || ev.target.closest("input, textarea, video")) return;
  if (ev.key !== "ArrowDown" && ev.key !== "ArrowUp" && ev.key !== "j" && ev.key !== "k") return;
  const items = state.page.items;
  const at = items.findIndex((t) => t.index === state.selected);
  const next = (ev.key === "ArrowDown" || ev.key === "j") ? Math.min(items.length - 1, at + 1) : Math.max(0, at - 1);
  ev.preventDefault();
  select(items[next].index).catch(showError);
  const row = document.querySelector(`#trigger-rows tr[data-index="${items[next].index}"]`);
  if (row) row.scrollIntoView({block: "nearest"});
});
function setView(v) {
  state.view = v;
  document.getElementById("zoom-out").disabled = !v;
  document.getElementById("zoom-info").textContent = v ? `${sec(v.t0)}–${sec(v.t1)} s` : "whole source";
  renderTimeline();
  loadLanes().catch(showError);
}
(() => {
  const tl = document.getElementById("timeline");
  let from = null;
  const xIn = (ev) => ev.clientX - tl.getBoundingClientRect().left;
  tl.addEventListener("mousedown", (ev) => { if (xIn(ev) >= LEFT) { from = xIn(ev); ev.preventDefault(); } });
  window.addEventListener("mousemove", (ev) => {
    if (from === null) return;
    const r = document.getElementById("drag"), x = Math.max(LEFT, Math.min(xIn(ev), LEFT + plotWidth()));
    r.setAttribute("x", Math.min(from, x)); r.setAttribute("width", Math.abs(x - from));
  });
  window.addEventListener("mouseup", (ev) => {
    if (from === null) return;
    const to = xIn(ev), a = Math.min(from, to), b = Math.max(from, to);
    from = null;
    document.getElementById("drag").setAttribute("width", 0);
    if (b - a >= 6) setView({t0: tOf(a), t1: Math.max(tOf(b), tOf(a) + 1e6)});
  });
})();
document.getElementById("zoom-page").addEventListener("click", () => {
  const items = state.page ? state.page.items : [];
  if (!items.length) return;
  // the page's onsets (their windows may reach beyond: they are clipped at the edges)
  const t0 = Math.min(...items.map((t) => t.t_event_ns));
  const t1 = Math.max(...items.map((t) => t.t_event_ns));
  const pad = Math.max(2.5e8, (t1 - t0) * 0.05);
  setView({t0: Math.max(0, t0 - pad), t1: Math.min(span(), t1 + pad)});
});
document.getElementById("zoom-out").addEventListener("click", () => setView(null));
const player = document.getElementById("player");
player.addEventListener("timeupdate", updatePlayhead);
player.addEventListener("seeked", updatePlayhead);
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => { renderTimeline(); renderLanes(); }, 150);
});
for (const id of ["raw-status", "raw-triggers", "raw-lanes"]) {
  const a = document.getElementById(id);
  a.href = withToken(a.getAttribute("href"));
}

refreshAll().then(() => {
  document.body.dataset.ready = "1";  // for tests and scripts: the first render is complete
  startLive();
}).catch(showError);
