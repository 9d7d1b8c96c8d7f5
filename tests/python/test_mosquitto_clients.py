"""The Debian mosquitto clients (mosquitto_pub / mosquitto_sub 2.0) against FleetMQ, for each
protocol version they speak: -V mqttv31, mqttv311 and mqttv5."""

import re
import signal

import pytest

from helpers import V5, mosquitto_pub

VERSIONS = ["mqttv31", "mqttv311", "mqttv5"]
PROTOCOL_IN_LOG = {"mqttv31": "3.1", "mqttv311": "3.1.1", "mqttv5": "5.0"}


def pub_ok(broker, topic, message, *extra, version="mqttv311", qos=0):
    r = mosquitto_pub(broker.host, broker.port, topic, message, *extra, version=version, qos=qos)
    assert r.returncode == 0, f"mosquitto_pub failed ({r.returncode}): {r.stdout} {r.stderr}"
    return r


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_at_each_qos(broker, mosq_sub, version):
    sub = mosq_sub(broker, ["mosq/#"], version=version, count=3, fmt="%t %p %q %r",
                   extra=["-q", "2", "-i", f"sub-{version}"])
    sub.wait_subscribed()
    for qos in (0, 1, 2):
        pub_ok(broker, f"mosq/{qos}", f"hello-{qos}", "-i", f"pub-{version}", version=version, qos=qos)
    assert sub.wait_exit() == 0
    assert sub.output() == ["mosq/0 hello-0 0 0", "mosq/1 hello-1 1 0", "mosq/2 hello-2 2 0"]
    proto = PROTOCOL_IN_LOG[version]
    broker.wait_log(rf'client connected client_id=sub-{version} .*protocol="{re.escape(proto)}"')
    broker.wait_log(rf'client connected client_id=pub-{version} .*protocol="{re.escape(proto)}"')


@pytest.mark.parametrize("pub_version,sub_version", [("mqttv31", "mqttv5"), ("mqttv5", "mqttv31"), ("mqttv311", "mqttv31")])
def test_across_protocol_versions(broker, mosq_sub, pub_version, sub_version):
    sub = mosq_sub(broker, ["cross/t"], version=sub_version, count=1, fmt="%t %p %q",
                   extra=["-q", "1", "-i", "cross-sub"])
    sub.wait_subscribed()
    pub_ok(broker, "cross/t", "between versions", "-i", "cross-pub", version=pub_version, qos=1)
    assert sub.wait_exit() == 0
    assert sub.output() == ["cross/t between versions 1"]


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_set_and_clear(broker, mosq_sub, version):
    pub_ok(broker, "ret/t", "kept", "-r", "-i", "ret-pub", version=version, qos=1)
    sub = mosq_sub(broker, ["ret/#"], version=version, count=1, fmt="%t %p %r", extra=["-i", "ret-sub1"])
    assert sub.wait_exit() == 0
    assert sub.output() == ["ret/t kept 1"]

    pub_ok(broker, "ret/t", None, "-r", "-i", "ret-pub", version=version, qos=1)  # -n: empty payload clears
    sub2 = mosq_sub(broker, ["ret/#"], version=version, count=1, fmt="%t %p %r", extra=["-i", "ret-sub2"])
    sub2.wait_subscribed()
    # A retained message would arrive right after the SUBACK, before this one.
    pub_ok(broker, "ret/marker", "live", "-i", "ret-pub", version=version)
    assert sub2.wait_exit() == 0
    assert sub2.output() == ["ret/marker live 0"]


def test_v5_properties_pass_through(broker, mosq_sub):
    sub = mosq_sub(broker, ["props/#"], version="mqttv5", count=1, fmt="%t|%p|%q|%P|%C|%E|%R|%D|%F",
                   extra=["-q", "1"])
    sub.wait_subscribed()
    pub_ok(broker, "props/x", "hello", "-D", "publish", "user-property", "k", "v",
           "-D", "publish", "content-type", "text/x", "-D", "publish", "message-expiry-interval", "60",
           "-D", "publish", "response-topic", "props/reply", "-D", "publish", "correlation-data", "abc",
           "-D", "publish", "payload-format-indicator", "1", version="mqttv5", qos=1)
    assert sub.wait_exit() == 0
    (line,) = sub.output()
    topic, payload, qos, user, ctype, expiry, resp, corr, pfi = line.split("|")
    assert (topic, payload, qos, user, ctype, resp, corr, pfi) == (
        "props/x", "hello", "1", "k:v", "text/x", "props/reply", "abc", "1")
    assert 58 <= int(expiry) <= 60


@pytest.mark.parametrize("version", VERSIONS)
def test_will_of_a_killed_mosquitto_sub(broker, clients, mosq_sub, version):
    watcher = clients(broker, "watcher", V5)
    watcher.connect()
    watcher.subscribe("wills/#", 1)
    victim = mosq_sub(broker, ["anything"], version=version,
                      extra=["-i", f"victim-{version}", "--will-topic", f"wills/{version}",
                             "--will-payload", "mosquitto_sub died", "--will-qos", "1"])
    victim.wait_subscribed()
    victim.proc.send_signal(signal.SIGKILL)
    msg = watcher.wait_message(f"wills/{version}")
    assert (msg.payload, msg.qos) == (b"mosquitto_sub died", 1)


@pytest.mark.parametrize("version", VERSIONS)
def test_no_will_when_mosquitto_sub_exits_normally(broker, clients, mosq_sub, version):
    watcher = clients(broker, "watcher", V5)
    watcher.connect()
    watcher.subscribe("wills/#", 1)
    sub = mosq_sub(broker, ["normal/t"], version=version, count=1,
                   extra=["-i", f"normal-{version}", "--will-topic", "wills/normal", "--will-payload", "nope"])
    sub.wait_subscribed()
    pub_ok(broker, "normal/t", "bye", version=version)
    assert sub.wait_exit() == 0  # -C 1: sends DISCONNECT and exits
    broker.wait_log(rf"client disconnected: client sent DISCONNECT.*client_id=normal-{version}")
    assert watcher.settle(0.4) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_persistent_session_receives_messages_queued_while_offline(broker, mosq_sub, version):
    args = ["-c", "-q", "1", "-i", f"persist-{version[-2:]}"]
    # -E: DISCONNECT and exit once subscribed; the session stays (-c). Not SIGINT right after
    # the SUBACK line: mosquitto_sub's SIGINT handler calls mosquitto_disconnect_v5, which
    # takes the library's mutexes and logs (not safe in a signal handler), and one CI run
    # hung there without sending DISCONNECT.
    first = mosq_sub(broker, ["persist/t"], version=version, extra=[*args, "-E"])
    assert first.wait_exit() == 0
    client = f"client_id=persist-{version[-2:]}"
    # The connect log shows what the client asked for and what it found.
    clean = "clean_start" if version == "mqttv5" else "clean_session"
    broker.wait_log(rf"client connected {client} .*{clean}=false session_present=false")
    broker.wait_log(rf"client disconnected: client sent DISCONNECT.*{client}")
    pub_ok(broker, "persist/t", "queued-q1", version=version, qos=1)
    pub_ok(broker, "persist/t", "not-queued-q0", version=version, qos=0)
    pub_ok(broker, "persist/t", "queued-q2", version=version, qos=2)
    second = mosq_sub(broker, ["persist/t"], version=version, count=2, fmt="%p %q", extra=args)
    assert second.wait_exit() == 0
    assert second.output() == ["queued-q1 1", "queued-q2 1"]
    broker.wait_log(rf"client connected {client} .*{clean}=false session_present=true")


def test_mosquitto_sub_v5_without_client_id_gets_an_assigned_one(broker, mosq_sub):
    sub = mosq_sub(broker, ["anon/t"], version="mqttv5", count=1, fmt="%p")
    line = sub.wait_line(r"received CONNACK")
    assert re.search(r"Client fleetmq-\S+ received CONNACK \(0\)", line), line
    sub.wait_subscribed()
    pub_ok(broker, "anon/t", "hi", version="mqttv5")
    assert sub.wait_exit() == 0
    assert sub.output() == ["hi"]
