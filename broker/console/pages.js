// The console's pages. Each one renders into `main` and may return a cleanup function that
// runs when the user leaves it. All data comes from the admin API (docs/admin-api.md).
import { api, h, confirmDialog, go, sampler, ApiError, SAMPLE_MS } from "./app.js";
import { renderTester } from "./tester.js";

const QOS = [0, 1, 2];

const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const fmtRate = (n) => (n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString("en-US"));

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function fmtDuration(s) {
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hh}h ${mm}m`;
  if (hh) return `${hh}h ${mm}m`;
  return `${mm}m ${s % 60}s`;
}

const fmtTime = (unix) => (unix ? new Date(unix * 1000).toLocaleString() : "–");

/** Wraps a table so it scrolls sideways on a narrow screen instead of overflowing. */
const tableWrap = (table) => h("div", { class: "table-wrap" }, table);

const card = (label, value, id) => h("div", { class: "stat" }, h("span", { class: "label" }, label),
  h("span", { class: "value", "data-stat": id }, value));

/** Per-second rates between the last two samples. */
function rates(samples) {
  if (samples.length < 2) return null;
  const a = samples[samples.length - 2];
  const b = samples[samples.length - 1];
  const dt = (b.t - a.t) / 1000;
  if (dt <= 0) return null;
  const per = (x, y) => Math.max(0, (y - x) / dt);
  const ma = a.stats.messages;
  const mb = b.stats.messages;
  const drops = {};
  for (const reason of Object.keys(mb.dropped_by_reason)) {
    drops[reason] = per(ma.dropped_by_reason[reason] ?? 0, mb.dropped_by_reason[reason]);
  }
  return {
    inByQos: QOS.map((q) => per(ma.received_by_qos[q], mb.received_by_qos[q])),
    outByQos: QOS.map((q) => per(ma.sent_by_qos[q], mb.sent_by_qos[q])),
    in: per(ma.received, mb.received),
    out: per(ma.sent, mb.sent),
    drops,
  };
}

/** Series for the charts: one point per pair of successive samples. */
function history(samples) {
  const points = [];
  for (let i = 1; i < samples.length; i += 1) {
    const r = rates(samples.slice(i - 1, i + 1));
    if (r) points.push({ in: r.in, out: r.out, connections: samples[i].stats.clients.connected });
  }
  return points;
}

/** A line chart on a canvas (no library): `series` = [{label, color, values}]. */
function drawChart(canvas, series, title) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = canvas.clientHeight || 160;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const pad = { left: 44, right: 8, top: 22, bottom: 16 };
  const n = Math.max(2, ...series.map((s) => s.values.length));
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  const x = (i) => pad.left + (i * (width - pad.left - pad.right)) / (n - 1);
  const y = (v) => height - pad.bottom - (v / max) * (height - pad.top - pad.bottom);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#57606a";
  ctx.strokeStyle = "#d0d7de";
  ctx.lineWidth = 1;
  for (const v of [0, max / 2, max]) {
    ctx.beginPath();
    ctx.moveTo(pad.left, y(v));
    ctx.lineTo(width - pad.right, y(v));
    ctx.stroke();
    ctx.fillText(fmtRate(v), 4, y(v) + 4);
  }
  let legendX = pad.left;
  ctx.fillText(title, legendX, 12);
  legendX += ctx.measureText(title).width + 12;
  for (const s of series) {
    ctx.fillStyle = s.color;
    ctx.fillRect(legendX, 5, 10, 8);
    ctx.fillStyle = "#24292f";
    ctx.fillText(s.label, legendX + 14, 12);
    legendX += ctx.measureText(s.label).width + 28;
    if (!s.values.length) continue;
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    // Right-aligned: the newest point is at the right edge.
    const offset = n - s.values.length;
    s.values.forEach((v, i) => (i ? ctx.lineTo(x(i + offset), y(v)) : ctx.moveTo(x(i + offset), y(v))));
    ctx.stroke();
  }
}

function overview(main) {
  const body = h("div");
  const rateChart = h("canvas", { class: "chart", id: "chart-rates", "aria-label": "messages per second" });
  const connChart = h("canvas", { class: "chart", id: "chart-connections", "aria-label": "connections" });
  main.append(
    h("h2", {}, "Overview"),
    body,
    h("div", { class: "charts" }, h("div", { class: "card" }, rateChart), h("div", { class: "card" }, connChart)),
    h("p", { class: "hint" }, `Refreshed every ${SAMPLE_MS / 1000} s from /api/v1/stats; rates are differences between successive samples.`),
  );
  const render = () => {
    const samples = sampler.samples;
    const last = samples[samples.length - 1];
    if (!last) {
      body.replaceChildren(h("p", {}, sampler.error ? `Cannot read the stats: ${sampler.error}` : "Loading…"));
      return;
    }
    const s = last.stats;
    const r = rates(samples);
    const rate = (v) => (r ? fmtRate(v) : "…");
    body.replaceChildren(
      ...(sampler.error ? [h("p", { class: "error" }, `Last refresh failed: ${sampler.error}`)] : []),
      h("div", { class: "stats" },
        card("Version", s.version, "version"),
        card("Uptime", fmtDuration(s.uptime_seconds), "uptime"),
        card("Connections", `${fmtInt(s.clients.connected)} (max ${fmtInt(s.clients.maximum)})`, "connections"),
        card("Sessions", fmtInt(s.sessions), "sessions"),
        card("Subscriptions", fmtInt(s.subscriptions), "subscriptions"),
        card("Retained messages", fmtInt(s.retained), "retained"),
        card("Store size", fmtBytes(s.store_size_bytes), "store"),
        card("Queued / in flight", `${fmtInt(s.messages.queued)} / ${fmtInt(s.messages.inflight)}`, "queued"),
      ),
      h("div", { class: "columns" },
        h("div", { class: "card" }, h("h3", {}, "Messages per second"),
          tableWrap(h("table", { id: "rates" },
            h("thead", {}, h("tr", {}, h("th", {}, ""), ...QOS.map((q) => h("th", {}, `QoS ${q}`)), h("th", {}, "total"))),
            h("tbody", {},
              h("tr", {}, h("th", {}, "in"), ...QOS.map((q) => h("td", {}, rate(r?.inByQos[q]))), h("td", {}, rate(r?.in))),
              h("tr", {}, h("th", {}, "out"), ...QOS.map((q) => h("td", {}, rate(r?.outByQos[q]))), h("td", {}, rate(r?.out))),
            )))),
        h("div", { class: "card" }, h("h3", {}, "Dropped messages"),
          tableWrap(h("table", { id: "drops" },
            h("thead", {}, h("tr", {}, h("th", {}, "reason"), h("th", {}, "total"), h("th", {}, "per second"))),
            h("tbody", {}, ...Object.entries(s.messages.dropped_by_reason).map(([reason, n]) =>
              h("tr", {}, h("td", {}, reason), h("td", {}, fmtInt(n)), h("td", {}, rate(r?.drops[reason])))))))),
      ),
    );
    const points = history(samples);
    drawChart(rateChart, [
      { label: "in", color: "#1f6feb", values: points.map((p) => p.in) },
      { label: "out", color: "#2da44e", values: points.map((p) => p.out) },
    ], "messages/s");
    drawChart(connChart, [
      { label: "connected", color: "#8250df", values: samples.map((p) => p.stats.clients.connected) },
    ], "connections");
  };
  sampler.listeners.add(render);
  render();
  return () => sampler.listeners.delete(render);
}

/** Largest client page the list asks for (the API's own maximum). */
const CLIENT_PAGE = 1000;

async function clients(main, id) {
  if (id !== null) return clientDetail(main, id);
  const search = h("input", { type: "search", id: "client-search", placeholder: "Search client id, username or address", "aria-label": "search clients" });
  const list = h("div", { id: "client-list" });
  const refresh = h("button", { type: "button", class: "secondary", id: "clients-refresh" }, "Refresh");
  main.append(h("h2", {}, "Clients"), h("div", { class: "toolbar" }, search, refresh), list);
  let data = null;
  const render = () => {
    if (!data) return;
    const q = search.value.trim().toLowerCase();
    const items = data.items.filter((c) => !q || [c.client_id, c.username, c.address].some((v) => v && v.toLowerCase().includes(q)));
    list.replaceChildren(
      h("p", { class: "hint" }, `${items.length} shown of ${fmtInt(data.total)} sessions` +
        (data.total > data.items.length ? ` (the first ${CLIENT_PAGE} by client id are searched)` : "")),
      tableWrap(h("table", { id: "clients-table" },
        h("thead", {}, h("tr", {}, ...["client id", "state", "username", "address", "protocol", "keepalive", "connected since", "inflight", "queued", "subs"].map((t) => h("th", {}, t)))),
        h("tbody", {}, ...items.map((c) => h("tr", { "data-client": c.client_id },
          h("td", {}, h("a", { href: `#/clients/${encodeURIComponent(c.client_id)}` }, c.client_id || "(empty)")),
          h("td", {}, h("span", { class: c.connected ? "badge on" : "badge off" }, c.connected ? "connected" : "disconnected")),
          h("td", {}, c.username ?? "–"),
          h("td", {}, c.address ?? "–"),
          h("td", {}, c.protocol ?? "–"),
          h("td", {}, c.keep_alive === null ? "–" : `${c.keep_alive} s`),
          h("td", {}, fmtTime(c.connected_at ?? c.disconnected_at)),
          h("td", { class: "num" }, fmtInt(c.inflight)),
          h("td", { class: "num" }, fmtInt(c.queued)),
          h("td", { class: "num" }, fmtInt(c.subscription_count)),
        ))))));
  };
  const load = async () => {
    data = await api(`clients?limit=${CLIENT_PAGE}`);
    render();
  };
  search.addEventListener("input", render);
  refresh.addEventListener("click", () => load().catch((err) => list.replaceChildren(h("p", { class: "error" }, err.message))));
  await load();
  // The list follows the broker while it is on screen.
  const timer = setInterval(() => document.hidden || load().catch(() => {}), 5000);
  return () => clearInterval(timer);
}

async function clientDetail(main, id) {
  let c;
  try {
    c = await api(`clients/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      main.append(h("p", {}, h("a", { href: "#/clients" }, "← Clients")), h("p", { class: "error" }, `No session with client id ${JSON.stringify(id)}.`));
      return null;
    }
    throw err;
  }
  const field = (label, value) => [h("dt", {}, label), h("dd", {}, value ?? "–")];
  const endSession = h("input", { type: "checkbox", id: "end-session" });
  const disconnect = h("button", { type: "button", class: "danger", id: "disconnect" }, c.connected ? "Disconnect…" : "End session…");
  const result = h("p", { role: "status" });
  disconnect.addEventListener("click", async () => {
    const extra = c.connected ? h("label", {}, endSession, " also end the session (subscriptions and queued messages are removed)") : null;
    if (!(await confirmDialog(c.connected ? `Disconnect ${c.client_id}?` : `End the session of ${c.client_id}?`, extra))) return;
    const session = !c.connected || endSession.checked;
    try {
      const r = await api(`clients/${encodeURIComponent(id)}${session ? "?session=true" : ""}`, "DELETE");
      go("#/clients", `${c.client_id}: ${r.was_connected ? "disconnected" : "not connected"}${r.session_ended ? ", session ended" : ""}.`);
    } catch (err) {
      result.className = "error";
      result.textContent = err.message;
    }
  });
  main.append(
    h("p", {}, h("a", { href: "#/clients" }, "← Clients")),
    h("h2", {}, "Client ", h("code", { id: "client-id" }, c.client_id)),
    h("div", { class: "card" }, h("dl", { class: "fields" },
      field("state", c.connected ? "connected" : "disconnected"),
      field("username", c.username),
      field("address", c.address),
      field("listener", c.listener),
      field("protocol", c.protocol),
      field("keepalive", c.keep_alive === null ? null : `${c.keep_alive} s`),
      field("connected since", c.connected ? fmtTime(c.connected_at) : null),
      field("disconnected at", c.disconnected_at ? fmtTime(c.disconnected_at) : null),
      field("session expiry", c.session_expiry_interval === null ? "never" : `${c.session_expiry_interval} s`),
      field("queued", fmtInt(c.queued)),
      field("in flight", fmtInt(c.inflight)),
      field("inbound QoS 2", fmtInt(c.inbound_qos2)),
      field("will topic", c.will_topic),
    ), h("div", { class: "actions" }, disconnect), result),
    h("h3", {}, `Subscriptions (${c.subscriptions.length})`),
    c.subscriptions.length
      ? tableWrap(h("table", { id: "subscriptions" },
        h("thead", {}, h("tr", {}, ...["filter", "QoS", "no local", "retain as published", "retain handling", "subscription id"].map((t) => h("th", {}, t)))),
        h("tbody", {}, ...c.subscriptions.map((s) => h("tr", {},
          h("td", {}, h("code", {}, s.filter)), h("td", {}, s.qos), h("td", {}, s.no_local ? "yes" : "no"),
          h("td", {}, s.retain_as_published ? "yes" : "no"), h("td", {}, s.retain_handling), h("td", {}, s.subscription_id ?? "–"))))))
      : h("p", { class: "hint" }, "No subscriptions."),
  );
  return null;
}

/** Payload bytes from a base64 string. */
function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i += 1) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/** A classic hex dump: offset, 16 bytes in hex, the printable ASCII. */
export function hexDump(bytes) {
  const lines = [];
  for (let off = 0; off < bytes.length; off += 16) {
    const row = bytes.slice(off, off + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${off.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${ascii}`);
  }
  return lines.join("\n") || "(empty)";
}

/** The three views of a payload. */
export function payloadViews(bytes) {
  let text = null;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    // Not UTF-8: only the hex view applies.
  }
  let json = null;
  if (text !== null) {
    try {
      json = JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      // Not JSON.
    }
  }
  return {
    text: text ?? "(not UTF-8: see the hex view)",
    json: json ?? "(not JSON)",
    hex: hexDump(bytes),
    best: json !== null ? "json" : text !== null ? "text" : "hex",
  };
}

const RETAINED_PAGE = 100;

async function retained(main) {
  const prefix = h("input", { type: "search", id: "retained-prefix", placeholder: "Topic prefix, e.g. sensors/", "aria-label": "topic prefix" });
  const browse = h("button", { type: "submit", id: "retained-browse" }, "Browse");
  const list = h("div", { id: "retained-list" });
  const detail = h("div", { id: "retained-detail" });
  const form = h("form", { class: "toolbar" }, prefix, browse);
  main.append(h("h2", {}, "Retained messages"), form, h("div", { class: "split" }, list, detail));
  let offset = 0;
  const load = async () => {
    const q = new URLSearchParams({ limit: RETAINED_PAGE, offset });
    if (prefix.value) q.set("prefix", prefix.value);
    const data = await api(`retained?${q}`);
    const pager = h("div", { class: "pager" },
      h("button", { type: "button", class: "secondary", disabled: offset === 0, onclick: () => { offset = Math.max(0, offset - RETAINED_PAGE); load(); } }, "← Previous"),
      h("span", {}, data.total ? `${offset + 1}–${offset + data.items.length} of ${fmtInt(data.total)}` : "no retained messages"),
      h("button", { type: "button", class: "secondary", disabled: offset + RETAINED_PAGE >= data.total, onclick: () => { offset += RETAINED_PAGE; load(); } }, "Next →"));
    list.replaceChildren(pager, tableWrap(h("table", { id: "retained-table" },
      h("thead", {}, h("tr", {}, ...["topic", "QoS", "size", "expires in"].map((t) => h("th", {}, t)))),
      h("tbody", {}, ...data.items.map((m) => h("tr", { "data-topic": m.topic },
        h("td", {}, h("a", { href: "#", onclick: (e) => { e.preventDefault(); show(m.topic); } }, m.topic)),
        h("td", {}, m.qos), h("td", { class: "num" }, fmtBytes(m.payload_size)),
        h("td", {}, m.expires_in === null ? "–" : `${m.expires_in} s`)))))));
  };
  const show = async (topic) => {
    let m;
    try {
      m = await api(`retained/${encodeURIComponent(topic)}?encoding=base64`);
    } catch (err) {
      detail.replaceChildren(h("p", { class: "error" }, err.message));
      return;
    }
    const views = payloadViews(fromBase64(m.payload));
    const pre = h("pre", { class: "payload", id: "payload" });
    const tabs = h("div", { class: "tabs", role: "tablist" });
    const select = (name) => {
      pre.textContent = views[name];
      for (const b of tabs.children) b.classList.toggle("active", b.dataset.view === name);
    };
    for (const name of ["text", "json", "hex"]) {
      tabs.append(h("button", { type: "button", class: "tab", "data-view": name, onclick: () => select(name) }, name.toUpperCase()));
    }
    const del = h("button", { type: "button", class: "danger", id: "retained-delete" }, "Delete…");
    del.addEventListener("click", async () => {
      if (!(await confirmDialog(`Delete the retained message on ${topic}? New subscribers will no longer receive it.`))) return;
      try {
        await api(`retained/${encodeURIComponent(topic)}`, "DELETE");
        detail.replaceChildren(h("p", { class: "ok", role: "status" }, `Deleted the retained message on ${topic}.`));
        await load();
      } catch (err) {
        detail.append(h("p", { class: "error" }, err.message));
      }
    });
    const p = m.properties;
    detail.replaceChildren(h("div", { class: "card" },
      h("h3", {}, h("code", { id: "retained-topic" }, m.topic)),
      h("p", { class: "hint" }, `QoS ${m.qos}, ${fmtBytes(m.payload_size)}` +
        (m.expires_in === null ? "" : `, expires in ${m.expires_in} s`) +
        (p?.content_type ? `, content type ${p.content_type}` : "")),
      tabs, pre, h("div", { class: "actions" }, del)));
    select(views.best);
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    offset = 0;
    detail.replaceChildren();
    load().catch((err) => list.replaceChildren(h("p", { class: "error" }, err.message)));
  });
  await load();
  return null;
}

async function bridges(main) {
  main.append(h("h2", {}, "Bridges"));
  let data;
  try {
    data = await api("bridges");
  } catch (err) {
    // A broker without bridge support has no such resource: nothing is configured.
    if (err instanceof ApiError && err.status === 404) {
      main.append(h("p", { id: "bridges-empty" }, "No bridges configured."));
      return null;
    }
    throw err;
  }
  // The admin API wraps lists as {"items": [...]} (docs/admin-api.md).
  const items = Array.isArray(data) ? data : data.items ?? [];
  if (!items.length) {
    main.append(h("p", { id: "bridges-empty" }, "No bridges configured."));
    return null;
  }
  // Whatever fields the API reports (state, last error, forwarded counts), one column each.
  const columns = [...new Set(items.flatMap((b) => Object.keys(b)))];
  const cell = (v) => (v === null || v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v));
  main.append(tableWrap(h("table", { id: "bridges-table" },
    h("thead", {}, h("tr", {}, ...columns.map((c) => h("th", {}, c.replaceAll("_", " "))))),
    h("tbody", {}, ...items.map((b) => h("tr", {}, ...columns.map((c) => h("td", {}, cell(b[c])))))))));
  return null;
}

export const pages = { overview, clients, retained, tester: renderTester, bridges };
