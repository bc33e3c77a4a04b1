// The web console in a real browser: Debian's chromium driven by
// playwright-core. Started by tests/ui/main.rs, which runs the gateways,
// the broker and Home Assistant, and tells this script when it published
// (lines on stdin); each check prints "ok <check>" and any failure exits 1.
//
// Environment: UI_NODE_MODULES (from tests/ui/install), UI_LIVE_URL (a
// console on 127.0.0.1 without a password, in front of a real Home
// Assistant), UI_LOGIN_URL and UI_PASSWORD (a console on 127.0.0.2 with a
// password and a dead letter waiting), UI_SHOTS (a directory for
// screenshots), UI_HA_VERSION.
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const require = createRequire(join(env("UI_NODE_MODULES"), "/"));
const { chromium } = require("playwright-core");

const WAIT = 5000;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function expectLine(want) {
  const { value, done } = await lines.next();
  if (done || value.trim() !== want) throw new Error(`expected "${want}" from the test, got ${done ? "end of input" : JSON.stringify(value)}`);
}
function ok(check, extra = "") {
  console.log(`ok ${check}${extra ? " " + extra : ""}`);
}
async function shot(page, name) {
  await page.screenshot({ path: join(env("UI_SHOTS"), name), fullPage: false });
}
async function status(page, path, init) {
  return page.evaluate(async ([path, init]) => (await fetch(path, init)).status, [path, init]);
}

const profile = mkdtempSync(join(tmpdir(), "mqtt-ha-gateway-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1280, height: 800 },
  colorScheme: "light",
});
const page = context.pages()[0] || await context.newPage();
try {
  const live = env("UI_LIVE_URL");
  page.setDefaultTimeout(WAIT);

  // 1. The page loads and the live stream connects.
  await page.goto(live + "/ui/");
  await page.locator("#app").waitFor({ state: "visible" });
  await page.locator("#live-state", { hasText: "live" }).waitFor();
  ok("page-loads");

  // 2. A button press published to the broker appears within a second,
  //    with the call made and HA's answer.
  console.log("ready-live");
  await expectLine("published");
  const published = Date.now();
  const row = page.locator('li[data-topic="zigbee2mqtt/hall_button"]').first();
  await row.locator('.badge[data-outcome="ok"]').waitFor({ timeout: 1000 });
  ok("live-view", `${Date.now() - published} ms`);
  await row.locator("summary").click();
  await row.getByText("light.toggle", { exact: false }).first().waitFor();
  await row.locator("dd", { hasText: /^200$/ }).waitFor();
  await shot(page, "live.png");

  // 3. The route tester: the call for a Zigbee2MQTT button, the reason for a denied one.
  await page.getByRole("tab", { name: "Route tester" }).click();
  await page.getByTestId("test-topic").fill("zigbee2mqtt/hall_button");
  await page.getByTestId("test-payload").fill('{"action":"single","battery":97}');
  await page.getByTestId("test-run").click();
  await page.getByTestId("test-call").filter({ hasText: "light.toggle" }).filter({ hasText: "light.kitchen" }).waitFor();
  ok("tester-call");
  await shot(page, "tester.png");
  await page.getByTestId("test-topic").fill("zigbee2mqtt/garage_button");
  await page.getByTestId("test-run").click();
  await page.getByTestId("test-denied").filter({ hasText: "entity_denied" }).filter({ hasText: "allow_entities" }).waitFor();
  ok("tester-denied");
  await shot(page, "tester-denied.png");

  // 4. Status and config.
  await page.getByRole("tab", { name: "Status" }).click();
  await page.locator('[data-card="HA version"]', { hasText: env("UI_HA_VERSION") }).waitFor();
  await page.locator('[data-card="MQTT broker"]', { hasText: "connected" }).waitFor();
  await page.locator("#chart rect").first().waitFor({ state: "attached" });
  ok("status");
  await shot(page, "status.png");
  await page.getByRole("tab", { name: "Config" }).click();
  await page.getByTestId("source").filter({ hasText: "routes.d/devices.toml:" }).first().waitFor();
  ok("config");
  await shot(page, "config.png");

  // 5. A POST with a wrong CSRF token, or none, is refused.
  const body = JSON.stringify({ topic: "zigbee2mqtt/hall_button", payload: "{}" });
  const post = (token) => ({ method: "POST", headers: { "Content-Type": "application/json", ...(token ? { "X-CSRF-Token": token } : {}) }, body });
  const wrong = await status(page, "/ui/api/test", post("0000000000000000000000000000000000000000000000000000000000000000"));
  const none = await status(page, "/ui/api/test", post(null));
  if (wrong !== 403 || none !== 403) throw new Error(`a wrong CSRF token got ${wrong}, none got ${none}; expected 403`);
  ok("csrf-refused");

  // 6. On a phone.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole("tab", { name: "Live" }).click();
  await shot(page, "phone.png");
  await page.setViewportSize({ width: 1280, height: 800 });

  // 7. A non-loopback listener: the login comes first.
  const login = env("UI_LOGIN_URL");
  await page.goto(login + "/ui/#dead");
  await page.getByTestId("login").waitFor({ state: "visible" });
  if (await page.locator("#app").isVisible()) throw new Error("the console showed before a login");
  const anonymous = await status(page, "/ui/api/status", {});
  if (anonymous !== 401) throw new Error(`the API answered ${anonymous} without a login`);
  await page.locator("#password").fill("not the password");
  await page.locator("#login-form button").click();
  await page.locator("#login-error", { hasText: "login required" }).waitFor();
  await shot(page, "login.png");
  await page.locator("#password").fill(env("UI_PASSWORD"));
  await page.locator("#login-form button").click();
  await page.locator("#app").waitFor({ state: "visible" });
  ok("login-required");

  // 8. Replaying a dead letter.
  await page.getByRole("tab", { name: "Dead letters" }).click();
  const dead = page.getByTestId("dead-letters").locator("li.dead").first();
  await dead.locator('.badge[data-outcome="ha_unavailable"]').waitFor();
  await dead.getByTestId("replay").click();
  await dead.getByTestId("replay-result").locator('.badge[data-outcome="ok"]').waitFor();
  ok("replay");
  await shot(page, "dead-letters.png");
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  process.exitCode = 1;
  await shot(page, "failure.png").catch(() => {});
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(process.exitCode || 0);
