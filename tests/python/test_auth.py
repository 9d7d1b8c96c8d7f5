"""Authentication and authorization with real files and real clients: password files written
by Debian's mosquitto_passwd and by `fleetmq-broker passwd`, Mosquitto-format ACLs enforced on
PUBLISH, SUBSCRIBE and delivery, client certificates as usernames, and hot reload of both
files without dropping anyone who keeps their rights."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

import rawmqtt
from conftest import broker_binary, free_port
from helpers import V5, V311, wait_until
from test_transports import Pki, tls_listener

ACL = """\
# anonymous clients (none allowed here) would get these
topic read public/#

user alice
topic readwrite alice/#
topic read sensors/#
topic deny sensors/secret/#

user bob
topic write sensors/#

pattern readwrite clients/%c/#
"""


def mosquitto_passwd(path, user: str, password: str, create: bool = False, *extra: str):
    args = ["mosquitto_passwd", *extra, *(["-c"] if create else []), "-b", str(path), user, password]
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@pytest.fixture
def secured(start_broker, tmp_path):
    """A broker with a mosquitto_passwd file (alice: $7$ PBKDF2, bob: $6$ SHA-512) and the ACL."""
    passwords = tmp_path / "passwords"
    mosquitto_passwd(passwords, "alice", "alice-pw", create=True)
    mosquitto_passwd(passwords, "bob", "bob-pw", False, "-H", "sha512")
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    broker = start_broker({"auth": {"password_file": str(passwords), "acl_file": str(acl)}},
                          unset=("auth.allow_anonymous",))
    return broker, passwords, acl


def login(clients, broker, client_id, user=None, password=None, protocol=V5, expect=0):
    c = clients(broker, client_id, protocol)
    if user is not None:
        c.paho.username_pw_set(user, password)
    c.connect(expect=expect)
    return c


def test_mosquitto_passwd_hashes_log_in_and_wrong_ones_are_refused(secured, clients):
    broker, _, _ = secured
    login(clients, broker, "a1", "alice", "alice-pw")
    login(clients, broker, "b1", "bob", "bob-pw", V311)
    c = clients(broker, "a3", V5)
    c.paho.username_pw_set("alice", "wrong")
    assert c.connect(expect=None)[0] == 0x86, "v5: Bad User Name or Password"
    c = clients(broker, "a4", V311)
    c.paho.username_pw_set("mallory", "x")
    assert c.connect(expect=None)[0] == 0x86, "v3 return code 4, as paho maps it"
    anon = clients(broker, "anon", V5)
    assert anon.connect(expect=None)[0] == 0x87, "anonymous refused once a password file is set"
    out = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-u", "alice", "-P", "nope",
                          "-t", "x", "-m", "y"], capture_output=True, text=True, timeout=10)
    assert out.returncode != 0 and "bad user name or password" in out.stderr.lower(), out.stderr
    log = broker.log()
    assert "connection refused: bad user name or password" in log
    assert "alice-pw" not in log and "bob-pw" not in log, "passwords never reach the log"


def test_fleetmq_passwd_files_log_in(start_broker, clients, tmp_path):
    passwords = tmp_path / "passwords"
    subprocess.run([broker_binary(), "passwd", "-c", "-b", str(passwords), "carol", "carol-pw"], check=True,
                   capture_output=True, timeout=60)
    broker = start_broker({"auth": {"password_file": str(passwords)}}, unset=("auth.allow_anonymous",))
    login(clients, broker, "c1", "carol", "carol-pw")
    c = clients(broker, "c2", V311)
    c.paho.username_pw_set("carol", "nope")
    assert c.connect(expect=None)[0] == 0x86


def test_acl_on_publish_subscribe_and_delivery(secured, clients):
    broker, _, _ = secured
    alice = login(clients, broker, "alice-1", "alice", "alice-pw")
    bob = login(clients, broker, "bob-1", "bob", "bob-pw")
    # SUBSCRIBE: granted where a read rule overlaps, refused elsewhere.
    assert alice.subscribe("#", 1) == [1], "wider than the rules: granted, filtered on delivery"
    assert alice.subscribe("elsewhere/#", 1) == [0x87]
    assert bob.subscribe("sensors/#", 1) == [0x87], "bob may only write sensors"
    # PUBLISH: bob writes sensors, alice reads them except the denied subtree.
    assert bob.publish("sensors/t1", b"21.5", 1)[0] == 0
    assert bob.publish("sensors/secret/key", b"s", 1)[0] == 0x10, "written, but nobody may read it"
    assert bob.publish("alice/inbox", b"no", 1)[0] == 0x87, "no write rule"
    assert alice.publish("alice/notes", b"mine", 1)[0] in (0, 0x10)
    assert alice.publish("$SYS/broker/x", b"no", 1)[0] == 0x87
    assert alice.publish("clients/alice-1/status", b"pattern %c", 1)[0] in (0, 0x10)
    assert alice.publish("clients/bob-1/status", b"not mine", 1)[0] == 0x87
    got = alice.wait_messages(3)
    time.sleep(0.3)
    topics = sorted(m.topic for m in alice.messages)
    assert topics == ["alice/notes", "clients/alice-1/status", "sensors/t1"], topics
    assert got, "delivery filtered by read rules, not by the subscription"


def test_v3_publish_refused_by_the_acl_is_dropped_silently(secured, clients):
    broker, _, _ = secured
    alice = login(clients, broker, "alice-r", "alice", "alice-pw")
    assert alice.subscribe("alice/#", 1) == [1]
    bob = login(clients, broker, "bob-v3", "bob", "bob-pw", V311)
    bob.publish("alice/x", b"dropped", 1)  # acknowledged, not delivered (Mosquitto's behaviour)
    assert bob.subscribe("alice/#", 1) == [0x80]
    time.sleep(0.3)
    assert not alice.messages


def test_client_certificate_cn_is_the_username(start_broker, clients, tmp_path):
    (tmp_path / "pki").mkdir()
    pki = Pki(tmp_path / "pki")
    acl = tmp_path / "acl"
    acl.write_text("user device-7\ntopic readwrite devices/device-7/#\n")
    port = free_port()
    broker = start_broker({
        "listeners": [tls_listener(pki, port, ca_file=pki.path("ca.crt"), require_certificate=True,
                                   use_identity_as_username=True)],
        "auth": {"acl_file": str(acl), "allow_anonymous": False},
    })
    tls = {"ca_certs": pki.path("ca.crt"), "certfile": pki.path("client.crt"), "keyfile": pki.path("client.key")}
    dev = clients(broker, "dev7", V5, tls=tls)
    dev.connect()  # no User Name, no password: the certificate is the identity
    assert dev.publish("devices/device-7/temp", b"20", 1)[0] in (0, 0x10)
    assert dev.publish("devices/device-8/temp", b"20", 1)[0] == 0x87, "ACL of user device-7 applies"


def test_reload_adds_and_removes_users_and_changes_acls_without_dropping_others(secured, clients, raw):
    broker, passwords, acl = secured
    alice = login(clients, broker, "alice-keep", "alice", "alice-pw")
    assert alice.subscribe("alice/#", 1) == [1]
    bob = raw(broker, rawmqtt.V5)
    connack = bob.connect("bob-raw", username="bob", password=b"bob-pw")
    assert connack.reason == 0, connack

    # New user dave, bob removed, alice loses read on alice/# but keeps write.
    mosquitto_passwd(passwords, "dave", "dave-pw")
    subprocess.run(["mosquitto_passwd", "-D", str(passwords), "bob"], check=True, capture_output=True)
    acl.write_text(ACL.replace("topic readwrite alice/#", "topic write alice/#"))
    broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "auth files reloaded" in broker.log(), what="the reload")

    gone = bob.wait_closed()
    assert any(p.type == rawmqtt.DISCONNECT and p.reason == 0x87 for p in gone), gone
    login(clients, broker, "dave-1", "dave", "dave-pw")
    assert not alice.disconnects, "alice keeps her connection"
    assert alice.publish("alice/x", b"write still allowed", 1)[0] in (0, 0x10)
    time.sleep(0.3)
    assert not alice.messages, "read on alice/# was withdrawn: nothing delivered to the old subscription"


def test_a_broken_password_file_update_keeps_the_previous_one(secured, clients):
    broker, passwords, _ = secured
    text = passwords.read_text()
    passwords.write_text(text + "eve:$5$not-a-mosquitto-hash\n")
    # Picked up by the file watcher, no signal.
    wait_until(lambda: "auth files not reloaded" in broker.log(), timeout=10, what="the refusal")
    assert f"{passwords}:3" in broker.log(), "file and line named"
    login(clients, broker, "alice-after", "alice", "alice-pw")


def test_a_malformed_acl_at_start_names_file_and_line(launch, tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite alice/#\ntopik read x\n")
    config = tmp_path / "bad-acl.yaml"
    config.write_text(f"auth:\n  acl_file: {acl}\nhttp:\n  enabled: false\nlisteners:\n  - bind: 127.0.0.1:{free_port()}\n")
    proc = launch(["--config", str(config)])
    assert proc.proc.wait(timeout=20) != 0
    assert f"{acl}:3" in proc.log(), proc.log()
