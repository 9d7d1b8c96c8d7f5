// MQTT.js over WebSocket against a FleetMQ broker: subscribes, publishes at QoS 1 with
// MQTT 5 and 3.1.1, and prints one JSON line with what arrived. Used by
// tests/python/test_transports.py. Usage: node ws_roundtrip.mjs <url>
import mqtt from "mqtt";

const url = process.argv[2];
const received = [];
const fail = (why) => {
  console.log(JSON.stringify({ ok: false, error: String(why), received }));
  process.exit(1);
};
setTimeout(() => fail("timeout"), 10000);

const connect = (clientId, protocolVersion) =>
  new Promise((resolve, reject) => {
    const client = mqtt.connect(url, { clientId, protocolVersion, reconnectPeriod: 0, connectTimeout: 5000 });
    client.once("connect", () => resolve(client));
    client.once("error", reject);
  });

try {
  const sub = await connect("mqttjs-sub", 5);
  sub.on("message", (topic, payload) => received.push({ topic, payload: payload.toString() }));
  await sub.subscribeAsync("js/#", { qos: 1 });
  const pub = await connect("mqttjs-pub", 4);
  await pub.publishAsync("js/v311", "from mqtt.js 3.1.1", { qos: 1 });
  await sub.publishAsync("js/v5", "from mqtt.js 5", { qos: 1 });
  const deadline = Date.now() + 5000;
  while (received.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  await pub.endAsync();
  await sub.endAsync();
  console.log(JSON.stringify({ ok: received.length === 2, received }));
  process.exit(0);
} catch (err) {
  fail(err);
}
