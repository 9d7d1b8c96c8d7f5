"""Smoke test: mosquitto_pub/sub and paho-mqtt against the real binary."""

import subprocess

import paho.mqtt.client as mqtt


def test_mosquitto_clients_round_trip(broker):
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", "smoke/#", "-q", "1", "-C", "1", "-W", "10", "-v"],
        stdout=subprocess.PIPE,
        text=True,
    )
    # mosquitto_sub has no "subscribed" signal; retry publishing until it is received.
    for _ in range(50):
        subprocess.run(
            ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-t", "smoke/x", "-m", "hello", "-q", "1"],
            check=True,
        )
        try:
            out, _ = sub.communicate(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            continue
    assert sub.returncode == 0
    assert out.strip() == "smoke/x hello"


def test_paho_v5_connack(broker):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-smoke", protocol=mqtt.MQTTv5)
    result = {}

    def on_connect(c, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        result["props"] = properties

    client.on_connect = on_connect
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        import time

        for _ in range(100):
            if "rc" in result:
                break
            time.sleep(0.05)
        assert result["rc"] == 0
        assert result["props"].ReceiveMaximum == 64
    finally:
        client.disconnect()
        client.loop_stop()
