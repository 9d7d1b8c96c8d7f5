"""Log lines: INFO "client connected" (client_id, peer, protocol, keep_alive), INFO "client
disconnected: <reason>", INFO "connection refused: <reason>", DEBUG per packet with
--log-level debug, JSON output with log.format json."""

import json
import re

import rawmqtt
from helpers import V5, V31, V311


def test_client_connected_line_has_client_id_peer_protocol_and_keep_alive(broker, clients):
    for client_id, protocol, name, keepalive in [("log-v5", V5, "5.0", 33), ("log-v311", V311, "3.1.1", 44),
                                                  ("log-v31", V31, "3.1", 55)]:
        c = clients(broker, client_id, protocol)
        c.connect(keepalive=keepalive)
        local_port = c.paho.socket().getsockname()[1]
        line = broker.wait_log(rf"client connected.*client_id={client_id} ")
        assert "INFO" in line
        assert f"peer=127.0.0.1:{local_port}" in line, line
        assert re.search(rf'protocol="?{re.escape(name)}"?( |$)', line), line
        assert f"keep_alive={keepalive}" in line, line


def test_client_disconnected_lines_give_the_reason(broker, clients, raw):
    normal = clients(broker, "normal")
    normal.connect()
    normal.disconnect()
    line = broker.wait_log(r"client disconnected: .*client_id=normal ")
    assert "INFO" in line and "client sent DISCONNECT" in line

    dropped = clients(broker, "dropped")
    dropped.connect()
    dropped.drop()
    line = broker.wait_log(r"client disconnected: .*client_id=dropped ")
    assert "without DISCONNECT" in line or "closed" in line, line

    first = raw(broker, rawmqtt.V5)
    first.connect("taken")
    raw(broker, rawmqtt.V5).connect("taken")
    first.wait_closed(3)
    broker.wait_log(r"session taken over.*client_id=taken|client_id=taken.*session taken over")

    lazy = raw(broker, rawmqtt.V311)
    lazy.connect("lazy", keepalive=1)
    lazy.wait_closed(4)
    line = broker.wait_log(r"client disconnected: .*client_id=lazy ")
    assert "keep-alive timeout" in line


def test_connection_refused_lines_give_the_reason(start_broker, raw):
    broker = start_broker({"limits": {"max_keepalive": 10}})
    assert raw(broker, rawmqtt.V311).connect("too-lazy", keepalive=100).reason == 2
    line = broker.wait_log(r"connection refused: .*client_id=too-lazy")
    assert "INFO" in line and "keep-alive" in line
    assert raw(broker, rawmqtt.V31).connect("", keepalive=5).reason == 2
    line = broker.wait_log(r'connection refused: client identifier not valid.*protocol="3.1"')
    assert "peer=127.0.0.1:" in line


def test_debug_level_logs_every_packet(start_broker, clients):
    broker = start_broker(args=["--log-level", "debug"])
    c = clients(broker, "chatty")
    c.connect()
    c.subscribe("dbg/t", 1)
    c.publish("dbg/t", b"hello", 1)
    c.wait_messages(1)
    line = broker.wait_log(r"DEBUG.*received PUBLISH.*dbg/t")
    assert "client_id=chatty" in line
    broker.wait_log(r"DEBUG.*subscribed to 'dbg/t'.*client_id=chatty")


def test_info_level_has_no_packet_lines(broker, clients):
    c = clients(broker, "quiet")
    c.connect()
    c.subscribe("dbg/t", 1)
    c.publish("dbg/t", b"hello", 1)
    c.wait_messages(1)
    c.disconnect()
    broker.wait_log(r"client disconnected: .*client_id=quiet")
    log = broker.log()
    assert "DEBUG" not in log and "received PUBLISH" not in log


def test_json_log_format(start_broker, clients):
    broker = start_broker({"log": {"format": "json"}})
    c = clients(broker, "jsonclient")
    c.connect(keepalive=21)
    broker.wait_log(r"client connected")
    records = [json.loads(line) for line in broker.log().splitlines() if line.strip()]
    connected = [r for r in records if "client connected" in json.dumps(r)]
    assert connected, records
    fields = connected[0].get("fields", connected[0])
    assert fields.get("client_id") == "jsonclient"
    assert fields.get("keep_alive") == 21
    assert connected[0].get("level") == "INFO"
