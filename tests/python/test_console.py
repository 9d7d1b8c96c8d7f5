"""The web console in a real browser: tests/js/console_e2e.mjs drives headless Chromium
(Debian's chromium + npm playwright-core) against a running broker; this test prepares real
MQTT clients around it and checks what happened on the broker side."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import pathlib
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, free_port
from helpers import V5, wait_until

JS = ROOT / "tests" / "js"
SHOTS = ROOT / "target" / "console-screenshots"
TOKEN = "console-e2e-token"


def chromium() -> str | None:
    return shutil.which("chromium") or (os.path.exists("/usr/bin/chromium") and "/usr/bin/chromium") or None


@pytest.fixture
def console_broker(start_broker, tmp_path):
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    http, ws = free_port(), free_port()
    port = free_port()
    broker = start_broker({
        "listeners": [{"bind": f"127.0.0.1:{port}"}, {"bind": f"127.0.0.1:{ws}", "protocol": "ws"}],
        "http": {"bind": f"127.0.0.1:{http}", "admin_token_file": str(token_file)},
        # A bridge whose remote is not there: the Bridges page shows it backing off.
        "bridges": [{"name": "edge-uplink", "addresses": [f"127.0.0.1:{free_port()}"],
                     "backoff": {"initial": "1s", "max": "2s"},
                     "topics": [{"pattern": "telemetry/#", "direction": "out"}]}],
    })
    wait_until(lambda: _status(f"http://127.0.0.1:{http}/healthz") == 200, what="the HTTP endpoint")
    return broker, http, ws


def _status(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as res:
            return res.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


class PrefixProxy:
    """A minimal reverse proxy that serves the broker's HTTP endpoint under /fleet/, as an
    ingress with a path prefix does (the prefix is stripped, everything else passed on)."""

    PREFIX = "/fleet"

    def __init__(self, upstream: int):
        prefix = self.PREFIX
        paths = self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                paths.append(self.path)
                if not self.path.startswith(prefix + "/"):
                    self.send_error(404, "outside the prefix")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path[len(prefix):], body=body, headers=headers)
                res = conn.getresponse()
                data = res.read()
                self.send_response(res.status)
                for name, value in res.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_DELETE = do_HEAD = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prefix_proxy(console_broker):
    proxy = PrefixProxy(console_broker[1])
    yield proxy
    proxy.close()


def test_console_in_a_browser(console_broker, clients, prefix_proxy):
    if chromium() is None or not (JS / "node_modules" / "playwright-core").is_dir():
        pytest.fail("chromium or playwright-core missing: run .ci/run (apt-get install chromium; npm ci --prefix tests/js)")
    broker, http, ws = console_broker

    # The client the page will find and disconnect (clean session: it is gone once disconnected).
    device = clients(broker, "paho-device-17", V5)
    device.connect()
    assert device.subscribe("devices/17/cmd", 1) == [1]

    # A retained message to browse and delete.
    setter = clients(broker, "paho-retainer", V5)
    setter.connect()
    setter.publish("console-e2e/config/17", json.dumps({"interval": 5, "name": "room 1"}).encode(), 1, retain=True)
    setter.disconnect()

    # A subscriber for what the page publishes.
    listener = clients(broker, "paho-listener", V5)
    listener.connect()
    assert listener.subscribe("console-e2e/from-page", 1) == [1]

    # A publisher for what the page subscribes to: it keeps publishing until the script ends,
    # so whenever the page's subscription lands, a message follows.
    talker = clients(broker, "paho-talker", V5)
    talker.connect()
    stop = threading.Event()

    def talk():
        n = 0
        while not stop.wait(0.2):
            n += 1
            talker.publish("console-e2e/to-page", f"ping {n} from paho".encode(), 0, wait=False)

    thread = threading.Thread(target=talk, daemon=True)
    thread.start()

    env = {
        **os.environ,
        "CONSOLE_URL": f"http://127.0.0.1:{http}/console/",
        "CONSOLE_TOKEN": TOKEN,
        "CONSOLE_WS_URL": f"ws://127.0.0.1:{ws}/mqtt",
        "CONSOLE_CLIENT": "paho-device-17",
        "CONSOLE_RETAINED": "console-e2e/config/17",
        "CONSOLE_PUBLISH_TOPIC": "console-e2e/from-page",
        "CONSOLE_SUBSCRIBE_TOPIC": "console-e2e/to-page",
        "CONSOLE_SHOTS": str(SHOTS),
        "CHROMIUM": chromium(),
        "CONSOLE_PREFIX_URL": f"http://127.0.0.1:{prefix_proxy.port}{PrefixProxy.PREFIX}/",
    }
    if os.environ.get("CONSOLE_README_SHOT"):
        env["CONSOLE_README_SHOT"] = os.environ["CONSOLE_README_SHOT"]
    try:
        proc = subprocess.run(["node", str(JS / "console_e2e.mjs")], env=env, cwd=JS,
                              capture_output=True, text=True, timeout=120)
    finally:
        stop.set()
        thread.join(timeout=5)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the browser script (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(lines[-1])
    assert out["ok"], f"browser script failed: {out.get('error')}\nsteps: {out['steps']}\nstderr: {proc.stderr}"
    steps = out["steps"]

    # Login: nothing before it, a wrong token refused and not kept.
    assert steps["app_hidden_before_login"] is True
    assert steps["wrong_token_refused"] is True
    assert steps["wrong_token_not_stored"] is True

    # Overview from /api/v1/stats.
    assert steps["version"].startswith("fleetmq ")
    assert steps["rates_shown"] == 2
    assert set(steps["drop_reasons"]) == {"expired", "queue_full", "too_large"}

    # Clients: the paho client with its details, then disconnected from the page.
    listed = steps["client_listed"]
    assert listed[0] == "paho-device-17" and listed[1] == "connected"
    assert listed[3].startswith("127.0.0.1:") and listed[4] == "5.0"
    assert steps["search_hides_it"] is True
    assert steps["client_subscriptions"] == ["devices/17/cmd"]
    assert "paho-device-17: disconnected" in steps["disconnect_message"]
    assert steps["client_gone"] is True
    device.wait_disconnect(timeout=5)
    assert not device.paho.is_connected()

    # Retained: shown as JSON and hex, then deleted on the broker.
    assert json.loads(steps["retained_json"]) == {"interval": 5, "name": "room 1"}
    assert steps["retained_hex_first_line"].startswith("00000000  7b 22 69 6e")
    assert "Deleted" in steps["retained_deleted"]
    fresh = clients(broker, "paho-fresh", V5)
    fresh.connect()
    assert fresh.subscribe("console-e2e/config/#", 1) == [1]
    assert fresh.settle(0.5) == [], "the deleted retained message was delivered"

    # Tester: offered the ws listener, received what paho published, and paho received what the
    # page published.
    assert steps["tester_default_url"] == f"ws://127.0.0.1:{ws}/mqtt"
    assert steps["tester_received"].startswith("ping ") and steps["tester_received"].endswith(" from paho")
    assert steps["tester_published"] == "Published to console-e2e/from-page."
    got = listener.wait_message("console-e2e/from-page", timeout=5)
    assert got.payload == b"hello from the console" and got.qos == 1

    assert "edge-uplink" in steps["bridges"], steps["bridges"]
    assert re.search(r"connecting|backoff", steps["bridges"]), steps["bridges"]
    # The bridge's last error itself, not merely the column header "last error".
    assert "connection refused" in steps["bridges"].lower(), "the last error is shown"
    assert steps["narrow_no_overflow"] is True
    assert steps["rejected_token_logs_out"] is True
    assert steps["logout_clears_token"] is True
    # Behind the path prefix: redirected to /fleet/console/, logged in through /fleet/api/v1.
    assert steps["prefix_page_url"] == f"http://127.0.0.1:{prefix_proxy.port}/fleet/console/#/overview"
    assert "/fleet/api/v1/stats" in prefix_proxy.paths and "/fleet/console/app.js" in prefix_proxy.paths
    assert not [p for p in prefix_proxy.paths if not p.startswith("/fleet/")], prefix_proxy.paths
    assert out["console_errors"] == [], out["console_errors"]
    assert (SHOTS / "07-overview.png").stat().st_size > 1000


def test_console_assets_are_public_but_the_api_is_not(console_broker):
    _, http, _ = console_broker
    base = f"http://127.0.0.1:{http}"
    with urllib.request.urlopen(f"{base}/console/", timeout=5) as res:
        assert res.headers["Content-Type"] == "text/html; charset=utf-8"
        assert b"FleetMQ console" in res.read()
    assert _status(f"{base}/api/v1/clients") == 401
    assert _status(f"{base}/api/v1/clients", "wrong") == 401
    assert _status(f"{base}/api/v1/clients", TOKEN) == 200
