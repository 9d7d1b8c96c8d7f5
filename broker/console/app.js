// FleetMQ console: login, admin API access, the stats sampler and the page router.
// Plain ES modules, no build step. Every URL is relative to the page so the console also
// works behind an ingress path prefix. The DOM is built with textContent only (h() below),
// so nothing coming from the broker (client ids, topics, payloads) is ever parsed as HTML.
import { pages } from "./pages.js";
import { tester } from "./tester.js";

const TOKEN_KEY = "fleetmq.console.token";
/** How often the overview figures are sampled (rates are deltas between samples). */
export const SAMPLE_MS = 2000;
/** Samples kept for the charts (10 minutes). */
const HISTORY = 300;

/** An admin API answer other than 2xx (401 excepted: that logs out). */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The admin API said 401: the session is over. */
export class Unauthorized extends Error {}

const apiUrl = (path) => new URL(`../api/v1/${path}`, document.baseURI);

async function call(path, method, token) {
  const res = await fetch(apiUrl(path), {
    method,
    headers: { Authorization: `Bearer ${token}` },
    cache: "no-store",
  });
  let body = null;
  try {
    body = await res.json();
  } catch {
    // Not JSON (a proxy's error page): the status says enough.
  }
  return { status: res.status, ok: res.ok, body };
}

/** Calls the admin API with the session's token; a 401 ends the session ("wrong token"). */
export async function api(path, method = "GET") {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    showLogin("");
    throw new Unauthorized("not logged in");
  }
  const res = await call(path, method, token);
  if (res.status === 401) {
    logout("wrong token");
    throw new Unauthorized("wrong token");
  }
  if (!res.ok) throw new ApiError(res.status, res.body?.error ?? `HTTP ${res.status}`);
  return res.body;
}

/** Builds an element: h("a", {href: "#/x", class: "y"}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "value") el.value = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Asks for confirmation in a modal; resolves true on Confirm. `extra`: more form controls. */
export function confirmDialog(text, extra = null) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-extra").replaceChildren(...(extra ? [extra] : []));
  return new Promise((resolve) => {
    const done = (answer) => {
      ok.removeEventListener("click", onOk);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      dialog.close();
      resolve(answer);
    };
    const ok = document.getElementById("confirm-ok");
    const cancel = document.getElementById("confirm-cancel");
    const onOk = () => done(true);
    const onCancel = () => done(false);
    ok.addEventListener("click", onOk);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
  });
}

/** A message above the page (e.g. the result of an action that navigated away). */
export function flash(text, kind = "ok") {
  const el = document.getElementById("flash");
  el.textContent = text;
  el.className = `flash ${kind}`;
  el.hidden = !text;
}

/** Polls /api/v1/stats while logged in; pages read `sampler.samples` and listen for updates. */
export const sampler = {
  samples: [],
  listeners: new Set(),
  timer: null,
  error: null,
  start() {
    if (this.timer) return;
    const tick = async () => {
      // A background tab costs the broker nothing (each sample walks every session); the next
      // rate simply spans the gap.
      if (document.hidden && this.samples.length) return;
      try {
        const stats = await api("stats");
        this.error = null;
        this.samples.push({ t: performance.now(), stats });
        if (this.samples.length > HISTORY) this.samples.shift();
      } catch (err) {
        if (err instanceof Unauthorized) return;
        this.error = err.message;
      }
      for (const listener of this.listeners) listener();
    };
    tick();
    this.timer = setInterval(tick, SAMPLE_MS);
  },
  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.samples = [];
  },
};

let cleanup = null;
let pendingFlash = "";

/** Navigates to `hash`, showing `message` above the new page. */
export function go(hash, message = "") {
  pendingFlash = message;
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function route() {
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    showLogin("");
    return;
  }
  const hash = location.hash.replace(/^#\/?/, "");
  const [name, ...rest] = hash.split("/");
  const page = pages[name] ? name : "overview";
  if (!pages[name]) {
    history.replaceState(null, "", "#/overview");
  }
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.page === page);
  }
  if (cleanup) cleanup();
  cleanup = null;
  flash(pendingFlash);
  pendingFlash = "";
  const main = document.getElementById("main");
  main.replaceChildren();
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  try {
    cleanup = (await pages[page](main, arg)) ?? null;
  } catch (err) {
    if (err instanceof Unauthorized) return;
    main.append(h("p", { class: "error" }, `Cannot show this page: ${err.message}`));
  }
}

function showLogin(message) {
  sampler.stop();
  document.getElementById("app").hidden = true;
  document.getElementById("main").replaceChildren();
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message;
  document.getElementById("token").focus();
}

/** Ends the session: forgets the token, closes the tester's connection, shows the login. */
export function logout(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  tester.disconnect();
  if (cleanup) cleanup();
  cleanup = null;
  showLogin(message);
}

function showApp() {
  document.getElementById("login").hidden = true;
  document.getElementById("app").hidden = false;
  sampler.start();
  route();
}

async function login(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  const error = document.getElementById("login-error");
  const token = input.value.trim();
  error.textContent = "";
  let res;
  try {
    res = await call("stats", "GET", token);
  } catch (err) {
    error.textContent = `Cannot reach the broker: ${err.message}`;
    return;
  }
  if (res.ok) {
    sessionStorage.setItem(TOKEN_KEY, token);
    input.value = "";
    showApp();
  } else if (res.status === 401) {
    error.textContent = "wrong token";
  } else if (res.status === 404) {
    error.textContent = "The admin API is off on this broker (set http.admin_token_file).";
  } else {
    error.textContent = res.body?.error ?? `The admin API answered HTTP ${res.status}.`;
  }
}

document.getElementById("login-form").addEventListener("submit", login);
document.getElementById("logout").addEventListener("click", () => logout(""));
window.addEventListener("hashchange", route);
if (sessionStorage.getItem(TOKEN_KEY)) showApp();
else showLogin("");
