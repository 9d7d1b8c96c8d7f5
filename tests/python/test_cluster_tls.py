"""TLS on the inter-node link (issue 9, `cluster.tls`): nodes serve their certificate on the
link and verify their peers' against the CA; a plain connection to the link port gets nowhere,
and a peer whose certificate is not from the CA gets no link. Test certificates from the
transports suite's PKI; everything on 127.0.0.1, every wait bounded."""

from __future__ import annotations

import re
import socket

from helpers import wait_until
from test_cluster import cluster, peer, remote_pair  # noqa: F401 (the `cluster` fixture)
from test_transports import Pki, pki  # noqa: F401 (the `pki` fixture)


def link_tls(pki, ca: str = "ca.crt") -> dict:
    return {"cert_file": pki.path("server.crt"), "key_file": pki.path("server.key"), "ca_file": pki.path(ca)}


def test_messages_cross_a_tls_link(cluster, clients, pki):  # noqa: F811
    _, brokers = cluster(2, tls=link_tls(pki))
    sub, pub = remote_pair(clients, brokers, "secure/#", "tls-sub", "tls-pub")
    pub.publish("secure/1", b"over tls", qos=1)
    assert sub.wait_message("secure/1").payload == b"over tls"

    # The link speaks TLS only: a plain MQTT CONNECT to it gets no CONNACK.
    line = brokers[0].wait_log(r"cluster link listening on 127\.0\.0\.1:\d+")
    port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([5, 2, 0, 60, 0, 0, 0]))
        s.settimeout(3)
        try:
            answer = s.recv(16)
        except (socket.timeout, ConnectionResetError):
            answer = b""
    assert not answer.startswith(b"\x20"), f"plain MQTT answered on the TLS link: {answer!r}"


def test_a_peer_with_a_foreign_certificate_gets_no_link(cluster, clients, pki):  # noqa: F811
    # Both nodes trust only other-ca, which did not sign the server certificate they present.
    _, brokers = cluster(2, tls=link_tls(pki, "other-ca.crt"))
    wait_until(lambda: (peer(brokers[0], "node-2") or {}).get("link", {}).get("state") == "down",
               timeout=15, what="node-1's link to node-2 down")
    assert (peer(brokers[0], "node-2") or {}).get("forwarded_out") == 0
