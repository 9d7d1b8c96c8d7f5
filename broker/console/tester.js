// Publish/subscribe tester: an MQTT connection from the page over WebSocket (MQTT.js, vendored
// in vendor/), for a quick check like MQTTX. The connection lives in this module, so it stays
// up while the user visits other pages, and ends on logout.
import { api, h } from "./app.js";

const URL_KEY = "fleetmq.console.ws-url";
/** Messages kept in the log (newest first). */
const LOG_SIZE = 200;

/** The tester's state, kept across page visits. */
export const tester = {
  client: null,
  url: "",
  status: "disconnected",
  error: "",
  subscriptions: [],
  messages: [],
  onChange: null,
  changed() {
    if (this.onChange) this.onChange();
  },
  disconnect() {
    if (this.client) this.client.end(true);
    this.client = null;
    this.status = "disconnected";
    this.subscriptions = [];
    this.changed();
  },
};

let mqttLib = null;

/** Loads MQTT.js on first use only (it is the console's largest file). */
async function loadMqtt() {
  if (!mqttLib) {
    const mod = await import("./vendor/mqtt.esm.js");
    mqttLib = mod.default?.connect ? mod.default : mod;
  }
  return mqttLib;
}

/**
 * The WebSocket URL to offer: the last one used in this browser, else the broker's ws listener
 * (wss when the page came over https) on the page's host name, as /api/v1/stats lists it.
 * Behind a proxy that exposes MQTT elsewhere the user edits it (and it is remembered).
 */
async function defaultUrl() {
  const saved = localStorage.getItem(URL_KEY);
  if (saved) return saved;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let listeners = [];
  try {
    listeners = (await api("stats")).listeners ?? [];
  } catch {
    // Without the list the user types the URL.
  }
  const ws = listeners.find((l) => l.protocol === scheme) ?? listeners.find((l) => l.protocol === "ws" || l.protocol === "wss");
  if (!ws) return "";
  const port = ws.address.slice(ws.address.lastIndexOf(":") + 1);
  return `${ws.protocol}://${location.hostname}:${port}${ws.path ?? "/mqtt"}`;
}

async function connect(form) {
  const url = form.url.value.trim();
  localStorage.setItem(URL_KEY, url);
  tester.disconnect();
  tester.url = url;
  tester.error = "";
  tester.status = "connecting";
  tester.changed();
  let lib;
  try {
    lib = await loadMqtt();
  } catch (err) {
    tester.status = "disconnected";
    tester.error = `cannot load MQTT.js: ${err.message}`;
    tester.changed();
    return;
  }
  const client = lib.connect(url, {
    clientId: form.clientId.value.trim() || `console-${Math.random().toString(16).slice(2, 10)}`,
    username: form.username.value || undefined,
    password: form.password.value || undefined,
    protocolVersion: Number(form.version.value),
    clean: true,
    connectTimeout: 5000,
    // A tester reports failures instead of retrying behind the user's back.
    reconnectPeriod: 0,
  });
  tester.client = client;
  client.on("connect", () => {
    tester.status = "connected";
    tester.changed();
  });
  client.on("error", (err) => {
    tester.error = err.message;
    tester.changed();
  });
  client.on("close", () => {
    if (tester.client !== client) return;
    tester.status = "disconnected";
    tester.subscriptions = [];
    tester.changed();
  });
  client.on("message", (topic, payload, packet) => {
    let text;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(payload);
    } catch {
      text = `(${payload.length} bytes, not UTF-8)`;
    }
    tester.messages.unshift({ time: new Date(), topic, qos: packet.qos, retain: packet.retain, text });
    tester.messages.length = Math.min(tester.messages.length, LOG_SIZE);
    tester.changed();
  });
}

/** The tester page. */
export async function renderTester(main) {
  const url = tester.client ? tester.url : await defaultUrl();
  const status = h("span", { id: "tester-status", class: "badge" });
  const error = h("p", { class: "error", id: "tester-error", role: "alert" });
  const connectForm = h("form", { class: "card grid-form", id: "tester-connect" },
    h("label", {}, "WebSocket URL", h("input", { name: "url", id: "tester-url", value: url, placeholder: `ws://${location.hostname}:PORT/mqtt`, required: true, spellcheck: "false" })),
    h("label", {}, "Client id", h("input", { name: "clientId", id: "tester-client-id", placeholder: "random" })),
    h("label", {}, "Username", h("input", { name: "username", autocomplete: "off" })),
    h("label", {}, "Password", h("input", { name: "password", type: "password", autocomplete: "off" })),
    h("label", {}, "MQTT version", h("select", { name: "version" }, h("option", { value: "5" }, "5.0"), h("option", { value: "4" }, "3.1.1"))),
    h("div", { class: "actions" },
      h("button", { type: "submit", id: "tester-connect-button" }, "Connect"),
      h("button", { type: "button", class: "secondary", id: "tester-disconnect", onclick: () => tester.disconnect() }, "Disconnect"),
      status),
    h("p", { class: "hint" }, "The broker needs a ws (or wss) listener, e.g. listeners: [{protocol: ws, bind: 0.0.0.0:8083}]; its path defaults to /mqtt."));
  connectForm.addEventListener("submit", (e) => {
    e.preventDefault();
    connect(connectForm);
  });

  const subForm = h("form", { class: "card grid-form", id: "tester-subscribe" },
    h("label", {}, "Topic filter", h("input", { name: "filter", id: "tester-filter", value: "#", required: true })),
    h("label", {}, "QoS", qosSelect("qos")),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "tester-subscribe-button" }, "Subscribe")));
  const subList = h("ul", { id: "tester-subscriptions", class: "chips" });
  subForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const filter = subForm.filter.value;
    const qos = Number(subForm.qos.value);
    if (!tester.client) return;
    tester.client.subscribe(filter, { qos }, (err, granted) => {
      if (err) tester.error = err.message;
      else if (granted?.[0]?.qos === 128) tester.error = `subscription to ${filter} refused`;
      else if (!tester.subscriptions.includes(filter)) tester.subscriptions.push(filter);
      tester.changed();
    });
  });

  const pubForm = h("form", { class: "card grid-form", id: "tester-publish" },
    h("label", {}, "Topic", h("input", { name: "topic", id: "tester-topic", required: true })),
    h("label", { class: "wide" }, "Payload", h("textarea", { name: "payload", id: "tester-payload", rows: 3 })),
    h("label", {}, "QoS", qosSelect("qos")),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "retain", id: "tester-retain" }), " retain"),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "tester-publish-button" }, "Publish")));
  const pubResult = h("p", { id: "tester-publish-result", role: "status" });
  pubForm.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!tester.client) return;
    const topic = pubForm.topic.value;
    tester.client.publish(topic, pubForm.payload.value, { qos: Number(pubForm.qos.value), retain: pubForm.retain.checked }, (err) => {
      pubResult.className = err ? "error" : "ok";
      pubResult.textContent = err ? err.message : `Published to ${topic}.`;
    });
  });

  const log = h("tbody");
  main.append(
    h("h2", {}, "Publish / subscribe tester"),
    connectForm, error,
    h("div", { class: "columns" },
      h("div", {}, h("h3", {}, "Subscribe"), subForm, subList),
      h("div", {}, h("h3", {}, "Publish"), pubForm, pubResult)),
    h("h3", {}, "Messages"),
    h("div", { class: "table-wrap" }, h("table", { id: "tester-messages" },
      h("thead", {}, h("tr", {}, ...["time", "topic", "QoS", "retain", "payload"].map((t) => h("th", {}, t)))), log)),
  );

  const render = () => {
    status.textContent = tester.status;
    status.className = `badge ${tester.status === "connected" ? "on" : "off"}`;
    error.textContent = tester.error;
    const connected = tester.status === "connected";
    for (const b of [subForm, pubForm].flatMap((f) => [...f.querySelectorAll("button")])) b.disabled = !connected;
    subList.replaceChildren(...tester.subscriptions.map((f) => h("li", {}, h("code", {}, f),
      h("button", { type: "button", class: "link", title: `unsubscribe ${f}`, onclick: () => {
        tester.client?.unsubscribe(f);
        tester.subscriptions = tester.subscriptions.filter((x) => x !== f);
        tester.changed();
      } }, "×"))));
    log.replaceChildren(...tester.messages.map((m) => h("tr", { "data-topic": m.topic },
      h("td", {}, m.time.toLocaleTimeString()), h("td", {}, h("code", {}, m.topic)), h("td", {}, m.qos),
      h("td", {}, m.retain ? "yes" : ""), h("td", { class: "payload-cell" }, m.text))));
  };
  tester.onChange = render;
  render();
  return () => {
    tester.onChange = null;
  };
}

function qosSelect(name) {
  return h("select", { name }, ...[0, 1, 2].map((q) => h("option", { value: q }, String(q))));
}
