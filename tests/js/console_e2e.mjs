// Drives the broker's web console in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core) and prints one JSON line with what it saw. Run by
// tests/python/test_console.py, which prepares the broker side (a paho client to disconnect,
// a retained message, a subscriber, a publisher) and checks the broker-side effects.
//
// Input (environment): CONSOLE_URL (http://127.0.0.1:PORT/console/), CONSOLE_TOKEN,
// CONSOLE_WS_URL (ws://127.0.0.1:PORT/mqtt), CONSOLE_CLIENT (client id to disconnect),
// CONSOLE_RETAINED (retained topic to view and delete), CONSOLE_PUBLISH_TOPIC (the page
// publishes "hello from the console" there), CONSOLE_SUBSCRIBE_TOPIC (the page subscribes;
// the test publishes there), CONSOLE_SHOTS (screenshot directory), CONSOLE_README_SHOT
// (optional: where to write the overview screenshot for the README), CONSOLE_PREFIX_URL
// (optional: the broker's root behind a path-prefix proxy).
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env("CONSOLE_URL");
const token = env("CONSOLE_TOKEN");
const wsUrl = env("CONSOLE_WS_URL");
const clientId = env("CONSOLE_CLIENT");
const retainedTopic = env("CONSOLE_RETAINED");
const publishTopic = env("CONSOLE_PUBLISH_TOPIC");
const subscribeTopic = env("CONSOLE_SUBSCRIBE_TOPIC");
const shots = env("CONSOLE_SHOTS");
mkdirSync(shots, { recursive: true });

/** Every wait in this script is bounded by this (ms). */
const WAIT = 10000;
const result = { ok: false, steps: {} };
const step = (name, value = true) => {
  result.steps[name] = value;
};
const done = (code) => {
  console.log(JSON.stringify(result));
  process.exit(code);
};
// A hung browser must not hang the test run.
setTimeout(() => {
  result.error = "overall timeout";
  done(1);
}, 90000).unref();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
const consoleErrors = [];
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on("pageerror", (err) => consoleErrors.push(String(err)));
  // The 401s of the wrong-token steps and the 404 of the absent bridges API are expected;
  // Chromium logs every failed request, so only those are let through.
  const expected = /Failed to load resource: the server responded with a status of (401|404)/;
  page.on("console", (msg) => msg.type() === "error" && !expected.test(msg.text()) && consoleErrors.push(msg.text()));
  const shot = (name, target = page) => target.screenshot({ path: join(shots, `${name}.png`) });

  // Before logging in nothing but the login form is on screen.
  await page.goto(url);
  await page.locator("#login-form").waitFor({ state: "visible" });
  step("app_hidden_before_login", await page.locator("#app").isHidden());

  // A wrong token is refused.
  await page.fill("#token", `${token}-wrong`);
  await page.click("#login-form button[type=submit]");
  await page.locator("#login-error", { hasText: "wrong token" }).waitFor();
  step("wrong_token_refused", await page.locator("#app").isHidden());
  step("wrong_token_not_stored", await page.evaluate(() => sessionStorage.length === 0));
  await shot("01-wrong-token");

  // The right one opens the overview.
  await page.fill("#token", token);
  await page.click("#login-form button[type=submit]");
  await page.locator("#app").waitFor({ state: "visible" });
  await page.locator('[data-stat="version"]').waitFor();
  step("version", await page.locator('[data-stat="version"]').textContent());
  // Rates need two samples.
  await page.waitForFunction(() => !document.querySelector("#rates td")?.textContent.includes("…"), null, { timeout: WAIT });
  step("rates_shown", await page.locator("#rates tbody tr").count());
  step("drop_reasons", await page.locator("#drops tbody tr td:first-child").allTextContents());

  // Clients: the paho client is listed, searchable, with its details and subscriptions.
  await page.click('#nav a[data-page="clients"]');
  const row = page.locator(`#clients-table tr[data-client="${clientId}"]`);
  await row.waitFor();
  await page.fill("#client-search", "no-such-client-anywhere");
  step("search_hides_it", await row.count() === 0);
  await page.fill("#client-search", clientId.slice(0, 8));
  await row.waitFor();
  step("client_listed", (await row.locator("td").allTextContents()).slice(0, 5));
  await shot("02-clients");
  await row.locator("a").click();
  await page.locator("#client-id", { hasText: clientId }).waitFor();
  step("client_subscriptions", await page.locator("#subscriptions tbody td:first-child").allTextContents());
  await shot("03-client-detail");

  // Disconnect it, with confirmation; the list no longer shows it.
  await page.click("#disconnect");
  await page.locator("#confirm").waitFor({ state: "visible" });
  await shot("04-confirm-disconnect");
  await page.click("#confirm-ok");
  await page.locator("#flash", { hasText: clientId }).waitFor();
  step("disconnect_message", await page.locator("#flash").textContent());
  await page.locator("#clients-table").waitFor();
  await row.waitFor({ state: "detached" });
  step("client_gone", true);

  // Retained: browse by prefix, view as JSON and hex, delete.
  await page.click('#nav a[data-page="retained"]');
  await page.fill("#retained-prefix", retainedTopic.split("/")[0] + "/");
  await page.click("#retained-browse");
  const retainedRow = page.locator(`#retained-table tr[data-topic="${retainedTopic}"]`);
  await retainedRow.waitFor();
  await retainedRow.locator("a").click();
  await page.locator("#retained-topic", { hasText: retainedTopic }).waitFor();
  step("retained_json", await page.locator("#payload").textContent());
  await page.click('.tab[data-view="hex"]');
  step("retained_hex_first_line", (await page.locator("#payload").textContent()).split("\n")[0]);
  await page.click('.tab[data-view="json"]');
  await shot("05-retained");
  await page.click("#retained-delete");
  await page.click("#confirm-ok");
  await retainedRow.waitFor({ state: "detached" });
  step("retained_deleted", await page.locator("#retained-detail").textContent());

  // Tester: connect over WebSocket, subscribe (the test publishes there), publish.
  await page.click('#nav a[data-page="tester"]');
  // Offered from the ws listener in /api/v1/stats.
  await page.locator("#tester-url").waitFor();
  step("tester_default_url", await page.inputValue("#tester-url"));
  await page.fill("#tester-url", wsUrl);
  await page.fill("#tester-client-id", "console-tester");
  await page.click("#tester-connect-button");
  await page.locator("#tester-status", { hasText: /^connected$/ }).waitFor();
  await page.fill("#tester-filter", subscribeTopic);
  await page.click("#tester-subscribe-button");
  await page.locator("#tester-subscriptions li", { hasText: subscribeTopic }).waitFor();
  const received = page.locator(`#tester-messages tr[data-topic="${subscribeTopic}"]`).first();
  await received.waitFor();
  step("tester_received", await received.locator(".payload-cell").textContent());
  await page.fill("#tester-topic", publishTopic);
  await page.fill("#tester-payload", "hello from the console");
  await page.selectOption("#tester-publish select[name=qos]", "1");
  await page.click("#tester-publish-button");
  await page.locator("#tester-publish-result", { hasText: "Published" }).waitFor();
  step("tester_published", await page.locator("#tester-publish-result").textContent());
  await shot("06-tester");

  // Bridges: the table the API's entries become (or the empty note without bridges).
  await page.click('#nav a[data-page="bridges"]');
  await page.locator("#bridges-table, #bridges-empty").first().waitFor();
  step("bridges", await page.locator("#bridges-table, #bridges-empty").first().textContent());

  // Overview again, after the traffic, for the README.
  await page.click('#nav a[data-page="overview"]');
  await page.locator('[data-stat="version"]').waitFor();
  await page.waitForTimeout(2500);
  await shot("07-overview");
  if (process.env.CONSOLE_README_SHOT) {
    await page.setViewportSize({ width: 1000, height: 640 });
    await page.waitForTimeout(300);
    await page.screenshot({ path: process.env.CONSOLE_README_SHOT });
  }

  // A narrow screen: nothing wider than the viewport except inside scrolling tables.
  await page.setViewportSize({ width: 380, height: 760 });
  await page.click('#nav a[data-page="clients"]');
  await page.locator("#clients-table").waitFor();
  step("narrow_no_overflow", await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth));
  await shot("08-narrow-clients");
  await page.setViewportSize({ width: 1200, height: 800 });

  // A token that stops working (rotated) sends the user back to the login with "wrong token".
  await page.evaluate(() => sessionStorage.setItem("fleetmq.console.token", "rotated-away"));
  await page.click('#nav a[data-page="retained"]');
  await page.locator("#login-error", { hasText: "wrong token" }).waitFor();
  step("rejected_token_logs_out", await page.locator("#app").isHidden());

  // Log in again, then log out: the token is forgotten.
  await page.fill("#token", token);
  await page.click("#login-form button[type=submit]");
  await page.locator("#app").waitFor({ state: "visible" });
  await page.click("#logout");
  await page.locator("#login-form").waitFor({ state: "visible" });
  step("logout_clears_token", await page.evaluate(() => sessionStorage.getItem("fleetmq.console.token") === null));

  // Behind a path prefix (a proxy maps /fleet/... to the broker's /...): the redirect from the
  // prefix's root and every API call stay under the prefix.
  if (process.env.CONSOLE_PREFIX_URL) {
    const prefixed = await context.newPage();
    prefixed.setDefaultTimeout(WAIT);
    prefixed.on("pageerror", (err) => consoleErrors.push(String(err)));
    await prefixed.goto(process.env.CONSOLE_PREFIX_URL);
    await prefixed.locator("#login-form").waitFor({ state: "visible" });
    await prefixed.fill("#token", token);
    await prefixed.click("#login-form button[type=submit]");
    await prefixed.locator('[data-stat="version"]').waitFor();
    step("prefix_page_url", prefixed.url());
    await prefixed.close();
  }

  result.console_errors = consoleErrors;
  result.ok = true;
  await browser.close();
  done(0);
} catch (err) {
  result.error = String(err?.stack ?? err);
  result.console_errors = consoleErrors;
  try {
    const [page] = browser.contexts().flatMap((c) => c.pages());
    if (page) await page.screenshot({ path: join(shots, "failure.png") });
  } catch {
    // The screenshot is a diagnostic only.
  }
  await browser.close().catch(() => {});
  done(1);
}
