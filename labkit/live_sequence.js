// The live sequence diagram of labkit.widgets.live_sequence, drawn as SVG in the browser.
//
// The kernel sends the layout of each exchange (its arrows, crosses, dashed waits and
// labels, in lanes and seconds: the same layout labkit.plots.sequence draws as a PNG)
// when it changes; this file draws each one once, in its own <g>, and scrolls the
// picture as time goes on. Hover or click a message for its details; tick a lane off to
// hide it; drag the time slider to look back.

const COLOURS = { ok: "#0072B2", redirect: "#56B4E9", client: "#E69F00", server: "#D55E00", failed: "#000000", pending: "#999999" };
// What each kind of thing an exchange shows looks like in the legend, in the PNG legend's order
// (labkit.plots._legend): only the kinds the diagram holds now are listed.
const LEGEND = [
  ["ok", "━", "#0072B2", "2xx answer"], ["redirect", "━", "#56B4E9", "3xx answer (redirect)"],
  ["client", "━", "#E69F00", "4xx answer"], ["server", "━", "#D55E00", "5xx answer"],
  ["failed", "━", "#000000", "no answer"],
  ["pending", "┄", "#999999", "in flight"], ["lost", "✕", "#000000", "lost"], ["reset", "✕", "#000000", "reset"],
  ["refused", "✕", "#000000", "refused"], ["answered", "◆", "#000000", "answered by the link"],
  ["copy", "━", "#CC79A7", "copy sent by the link"], ["timeout", "╌", "#000000", "waiting until timeout"],
  ["transaction committed", "█", "#009E73", "transaction committed"],
  ["transaction rolled back", "█", "#D55E00", "transaction rolled back"],
  ["lock wait", "┄", "#999999", "waiting for the lock"],
];
const NS = "http://www.w3.org/2000/svg";
const HEIGHT = 420, TOP = 46, LEFT = 52, RIGHT = 16;

function svg(tag, attributes = {}, parent = null) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (parent) parent.appendChild(node);
  return node;
}

function html(tag, attributes = {}, parent = null, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function seconds(t) {
  return t === null || t === undefined ? "-" : `${t.toFixed(3)} s`;
}

function render({ model, el }) {
  const exchanges = new Map();   // id -> layout
  const drawn = new Map();       // id -> <g>
  let lanes = [], states = {}, latest = 0, follow = true, pinned = null;

  const root = html("div", { class: "labkit-live" }, el);
  root.style.cssText = "font: 12px system-ui, sans-serif; max-width: 100%;";
  const title = html("div", {}, root, model.get("title"));
  title.style.cssText = "font-weight: bold; margin: 2px 0 4px 0;";
  const filters = html("div", { class: "labkit-live-lanes" }, root);
  const controls = html("div", {}, root);
  controls.style.cssText = "display: flex; gap: 1em; align-items: center; margin: 4px 0;";
  html("span", {}, controls, "window");
  const windowSlider = html("input", { type: "range", min: "1", max: "60", step: "1", class: "labkit-live-window" },
    controls);
  windowSlider.value = String(model.get("window_s"));
  const windowLabel = html("span", {}, controls, `${windowSlider.value} s`);
  html("span", {}, controls, "time");
  const scrub = html("input", { type: "range", min: "0", max: "1000", value: "1000", class: "labkit-live-scrub" },
    controls);
  scrub.style.width = "16em";
  const liveBox = html("label", {}, controls);
  const live = html("input", { type: "checkbox", class: "labkit-live-follow" }, liveBox);
  live.checked = true;
  liveBox.appendChild(document.createTextNode(" live"));
  const counter = html("span", { class: "labkit-live-count" }, controls, "0 exchanges");

  const picture = svg("svg", { class: "labkit-live-svg", height: String(HEIGHT) }, root);
  picture.style.cssText = "width: 100%; background: white; display: block; border: 1px solid #eee;";
  const defs = svg("defs", {}, picture);
  const clip = svg("clipPath", { id: `labkit-clip-${Math.random().toString(36).slice(2)}` }, defs);
  const clipRect = svg("rect", { x: "0", y: String(TOP), width: "100", height: String(HEIGHT - TOP - 4) }, clip);
  const laneLayer = svg("g", {}, picture);
  const axisLayer = svg("g", {}, picture);
  const viewport = svg("g", { "clip-path": `url(#${clip.id})` }, picture);
  const content = svg("g", { class: "labkit-live-content" }, viewport);

  const legend = html("div", { class: "labkit-live-legend" }, root);
  legend.style.cssText = "display: flex; flex-wrap: wrap; gap: 0.3em 1.2em; margin-top: 4px; color: #333;";
  function drawLegend() {
    const shown = new Set();
    for (const x of exchanges.values()) for (const kind of x.kinds || []) shown.add(kind);
    legend.replaceChildren();
    for (const [kind, symbol, colour, text] of LEGEND) {
      if (!shown.has(kind)) continue;
      const item = html("span", { "data-kind": kind }, legend);
      const mark = html("span", {}, item, symbol);
      mark.style.cssText = `color: ${colour}; margin-right: 0.3em; font-weight: bold;`;
      item.appendChild(document.createTextNode(text));
    }
  }
  const tip = html("div", { class: "labkit-live-tip" }, root);
  tip.style.cssText = "position: absolute; display: none; background: #fffff6; border: 1px solid #999; " +
    "padding: 4px 6px; font: 11px monospace; white-space: pre; pointer-events: none; z-index: 10;";
  root.style.position = "relative";

  const hidden = () => new Set(model.get("hidden"));
  const width = () => Math.max(300, picture.getBoundingClientRect().width || 800);
  const perSecond = () => (HEIGHT - TOP - 10) / Number(windowSlider.value);
  const laneX = (x) => LEFT + (x + 0.5) * (width() - LEFT - RIGHT) / Math.max(lanes.length, 1);
  const y = (t) => TOP + t * perSecond();

  function drawLanes() {
    laneLayer.replaceChildren();
    filters.replaceChildren();
    const off = hidden();
    lanes.forEach((name, i) => {
      const gone = name in states;  // a stopped server, a killed or paused spawned service
      const line = svg("line", { x1: laneX(i), x2: laneX(i), y1: TOP - 6, y2: HEIGHT, stroke: gone ? "#ddd" : "#bbb",
        "stroke-dasharray": gone ? "3,3" : "none" }, laneLayer);
      line.style.opacity = off.has(name) ? 0.25 : 1;
      const label = svg("text", { x: laneX(i), y: 16, "text-anchor": "middle", "font-weight": "bold",
        fill: gone ? "#999" : "#000", class: "labkit-live-lane" }, laneLayer);
      label.textContent = name;
      if (gone) {
        const state = svg("text", { x: laneX(i), y: 30, "text-anchor": "middle", fill: "#999" }, laneLayer);
        state.textContent = `(${states[name]})`;
      }
      const box = html("label", {}, filters);
      box.style.marginRight = "1em";
      const check = html("input", { type: "checkbox", "data-lane": name, class: "labkit-live-filter" }, box);
      check.checked = !off.has(name);
      check.onchange = () => {
        const now = hidden();
        if (check.checked) now.delete(name); else now.add(name);
        model.set("hidden", [...now]);
        model.save_changes();
        redrawAll();
      };
      box.appendChild(document.createTextNode(" " + name));
    });
  }

  function drawOne(x) {
    const old = drawn.get(x.id);
    if (old) old.remove();
    const off = hidden();
    const group = svg("g", { class: `labkit-live-exchange outcome-${x.outcome}`, "data-id": String(x.id),
      "data-caller": x.caller, "data-service": x.service });
    if (off.has(x.caller) || off.has(x.service)) group.style.display = "none";
    const colour = COLOURS[x.outcome] || "#000";
    for (const a of x.arrows) {
      const [x0, y0, x1, y1] = [laneX(a.x0), y(a.y0), laneX(a.x1), y(a.y1)];
      svg("line", { x1: x0, y1: y0, x2: x1, y2: y1, stroke: a.colour, "stroke-width": 1.6, class: "labkit-live-arrow" },
        group);
      svg("line", { x1: x0, y1: y0, x2: x1, y2: y1, stroke: "transparent", "stroke-width": 9 }, group); // easy to hover
      if (a.head) {
        const angle = Math.atan2(y1 - y0, x1 - x0), size = 8;
        const p = (da) => `${x1 - size * Math.cos(angle + da)},${y1 - size * Math.sin(angle + da)}`;
        svg("polygon", { points: `${x1},${y1} ${p(0.4)} ${p(-0.4)}`, fill: a.colour }, group);
      }
      if (a.label) {
        const text = svg("text", { x: (x0 + x1) / 2, y: (y0 + y1) / 2 + (a.where === "below" ? 12 : -4),
          "text-anchor": "middle", fill: a.colour, "font-size": "10" }, group);
        text.textContent = a.label;
      }
    }
    for (const [[x0, y0], [x1, y1]] of x.pending)
      svg("line", { x1: laneX(x0), y1: y(y0), x2: laneX(x1), y2: y(y1), stroke: "#999", "stroke-dasharray": "2,2" }, group);
    for (const [[x0, y0], [x1, y1]] of x.waits)
      svg("line", { x1: laneX(x0), y1: y(y0), x2: laneX(x1), y2: y(y1), stroke: "#000", "stroke-dasharray": "5,3" }, group);
    for (const [[sx, sy0], [, sy1], spanColour] of x.spans || [])
      svg("rect", { x: laneX(sx) - 4, y: y(sy0), width: 8, height: Math.max(y(sy1) - y(sy0), 1), fill: spanColour,
        "fill-opacity": 0.45, class: "labkit-live-span" }, group);
    for (const [lx, ly] of x.links || []) {
      const [px, py] = [laneX(lx), y(ly)];
      svg("path", { d: `M${px},${py - 5}L${px + 5},${py}L${px},${py + 5}L${px - 5},${py}Z`, fill: "#000",
        class: "labkit-live-link-answer" }, group);
    }
    for (const [cx, cy] of x.crosses) {
      const [px, py] = [laneX(cx), y(cy)];
      svg("path", { d: `M${px - 5},${py - 5}L${px + 5},${py + 5}M${px - 5},${py + 5}L${px + 5},${py - 5}`,
        stroke: "#000", "stroke-width": 2.2, class: "labkit-live-cross" }, group);
    }
    for (const [mx, my, side, text] of x.marks) {
      const mark = svg("text", { x: laneX(mx) + 6 * side, y: y(my) + 4, "text-anchor": side > 0 ? "start" : "end",
        "font-size": "10", fill: "#000" }, group);
      mark.textContent = text;
    }
    group.addEventListener("mouseenter", (event) => show(x, event));
    group.addEventListener("mousemove", (event) => place(event));
    group.addEventListener("mouseleave", () => { if (pinned !== x.id) tip.style.display = "none"; });
    group.addEventListener("click", (event) => { pinned = pinned === x.id ? null : x.id; show(x, event); });
    content.appendChild(group);
    drawn.set(x.id, group);
    group.dataset.colour = colour;
  }

  function show(x, event) {
    const d = x.details;
    tip.textContent = [
      `${d.request || "(no request seen)"}  ${x.caller} → ${x.service}`,
      `status   ${d.status ?? "-"}${d.error ? "   error: " + d.error : ""}`,
      d.fault ? `fault    ${d.fault}` : null,
      `sent ${seconds(d.sent)}   arrived ${seconds(d.arrived)}`,
      `answered ${seconds(d.answered)}   back ${seconds(d.back)}`,
      `trace    ${d.trace_id || "-"}`,
    ].filter((line) => line !== null).join("\n");
    tip.style.display = "block";
    place(event);
  }

  function place(event) {
    const box = root.getBoundingClientRect();
    tip.style.left = `${Math.min(event.clientX - box.left + 12, box.width - 260)}px`;
    tip.style.top = `${event.clientY - box.top + 12}px`;
  }

  function scroll() {
    const span = Number(windowSlider.value);
    const start = follow ? Math.max(0, latest - span * 0.9) : (Number(scrub.value) / 1000) * Math.max(latest - span * 0.9, 0);
    content.setAttribute("transform", `translate(0, ${-start * perSecond()})`);
    clipRect.setAttribute("width", String(width()));
    axisLayer.replaceChildren();
    const step = span <= 2 ? 0.2 : span <= 10 ? 1 : 5;
    for (let t = Math.ceil(start / step) * step; t <= start + span; t += step) {
      const py = y(t - start);
      svg("line", { x1: LEFT - 5, x2: LEFT, y1: py, y2: py, stroke: "#999" }, axisLayer);
      const label = svg("text", { x: LEFT - 8, y: py + 4, "text-anchor": "end", "font-size": "10", fill: "#555" },
        axisLayer);
      label.textContent = `${t.toFixed(step < 1 ? 1 : 0)} s`;
    }
  }

  function redrawAll() {
    content.replaceChildren();
    drawn.clear();
    drawLanes();
    for (const x of exchanges.values()) drawOne(x);
    scroll();
  }

  model.on("msg:custom", (message) => {
    if (message.type === "snapshot") exchanges.clear();
    const newLanes = JSON.stringify(message.lanes) !== JSON.stringify(lanes) ||
      JSON.stringify(message.states) !== JSON.stringify(states);
    lanes = message.lanes;
    states = message.states;
    latest = message.type === "snapshot" ? message.now || 0 : Math.max(latest, message.now || 0);
    for (const id of message.drop || []) {
      exchanges.delete(id);
      const g = drawn.get(id);
      if (g) { g.remove(); drawn.delete(id); }
    }
    for (const x of message.exchanges) exchanges.set(x.id, x);
    if (message.type === "snapshot" || newLanes) redrawAll();
    else { for (const x of message.exchanges) drawOne(x); scroll(); }
    drawLegend();
    counter.textContent = `${exchanges.size} exchanges`;
    el.dataset.exchanges = String(exchanges.size);
  });
  windowSlider.oninput = () => {
    windowLabel.textContent = `${windowSlider.value} s`;
    model.set("window_s", Number(windowSlider.value));
    model.save_changes();
    redrawAll();
  };
  scrub.oninput = () => { follow = false; live.checked = false; scroll(); };
  live.onchange = () => { follow = live.checked; if (follow) scrub.value = "1000"; scroll(); };
  model.on("change:title", () => { title.textContent = model.get("title"); });
  model.on("change:window_s", () => {
    windowSlider.value = String(model.get("window_s"));
    windowLabel.textContent = `${windowSlider.value} s`;
    redrawAll();
  });
  model.on("change:hidden", () => redrawAll());
  new ResizeObserver(() => redrawAll()).observe(picture);
  model.send({ type: "ready" });
}

export default { render };
