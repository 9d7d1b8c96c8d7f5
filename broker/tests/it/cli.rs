//! The `fleetmq-broker` binary: signals and graceful shutdown, log lines, configuration
//! file errors and command-line overrides.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common;
use crate::raw::{self, Packet, Props, Raw, Version};

const BIN: &str = env!("CARGO_BIN_EXE_fleetmq-broker");

/// A broker process started by a test; killed (by its pid) if the test ends first.
struct Proc {
    child: Child,
    /// Directories the process uses, removed after it.
    dirs: Vec<common::TempDir>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

fn collect(reader: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        // Brokers of parallel tests must not all bind the default HTTP port (8080); a config
        // check prints the effective config, so it keeps the defaults.
        let http: &[&str] =
            if args.contains(&"--check-config") { &[] } else { &["--http-bind", "127.0.0.1:0"] };
        let mut child = Command::new(BIN)
            .args(args)
            .args(http)
            .env_remove("RUST_LOG")
            .env_remove("FLEETMQ_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fleetmq-broker");
        let stderr = collect(child.stderr.take().unwrap());
        let stdout = collect(child.stdout.take().unwrap());
        Proc { child, dirs: Vec::new(), stderr, stdout }
    }

    /// Starts the broker on `port` with a fresh data dir and `extra` arguments, and waits
    /// until it accepts connections.
    async fn serve(port: u16, extra: &[&str]) -> Proc {
        let dir = common::temp_dir("cli");
        let bind = format!("127.0.0.1:{port}");
        let data = dir.join("data");
        let mut args = vec!["--bind", &bind, "--data-dir", data.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut p = Proc::spawn(&args);
        p.dirs.push(dir);
        p.wait_line("listening on", common::WAIT).await;
        p
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits for a stderr line containing every one of `needles` (one string: all of it).
    async fn wait_line(&mut self, needle: &str, within: Duration) -> String {
        self.wait_line_all(&[needle], within).await
    }

    async fn wait_line_all(&mut self, needles: &[&str], within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) =
                self.stderr.lock().unwrap().iter().find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                panic!("broker exited ({status}) before logging {needles:?}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "no log line with {needles:?} in:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (e.g. "TERM") to this process.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads catch the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {within:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary to completion with `args` (for `--check-config` and config errors).
async fn run(args: &[&str]) -> (ExitStatus, String, String) {
    let mut p = Proc::spawn(args);
    let status = p.wait_exit(common::WAIT).await;
    let out = p.stdout.lock().unwrap().join("\n");
    (status, out, p.log())
}

/// A config file in its own temporary directory (removed when dropped).
struct ConfigFile {
    path: String,
    _dir: common::TempDir,
}

fn write_config(text: &str) -> ConfigFile {
    let dir = common::temp_dir("cfg");
    let path = dir.join("fleetmq.yaml");
    std::fs::write(&path, text).unwrap();
    ConfigFile { path: path.to_str().unwrap().to_string(), _dir: dir }
}

async fn graceful_shutdown(signal: &str) {
    let port = common::free_port();
    let mut broker = Proc::serve(port, &[]).await;
    let (mut watcher, _) = Raw::connect_ok(port, &raw::v5("sig-watch")).await;
    watcher.subscribe_ok(1, &[("sig/#", 1)]).await;
    let will = |t: &str| raw::Will { retain: true, ..raw::Will::new(t, "will") };
    let (mut c5, _) = Raw::connect_ok(port, &raw::v5("sig-5").will(will("sig/5"))).await;
    let (mut c3, _) = Raw::connect_ok(port, &raw::v311("sig-3").will(will("sig/3"))).await;
    broker.signal(signal);
    for (name, c) in [("watcher", &mut watcher), ("v5 client", &mut c5)] {
        let before = c.expect_closed(common::WAIT).await;
        assert!(
            !before.iter().any(|p| matches!(p, Packet::Publish(_))),
            "{name}: will published: {before:?}"
        );
        assert_eq!(raw::disconnect_code(&before), Some(0x8B), "{name}: Server shutting down: {before:?}");
    }
    let before = c3.expect_closed(common::WAIT).await;
    assert!(before.is_empty(), "v3 connection just closed: {before:?}");
    // No new connections are served any more.
    if let Some(mut late) = Raw::try_open(port, false).await {
        late.try_send(&raw::v311("sig-late").encode()).await;
        let got = late.recv(common::WAIT).await;
        assert!(
            !matches!(got, raw::Event::Packet(Packet::ConnAck { code: 0, .. })),
            "accepted a connection while stopping"
        );
    }
    let status = broker.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0), "exit status after SIG{signal}:\n{}", broker.log());
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "listener closed");
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully_without_wills_and_exits_0() {
    graceful_shutdown("TERM").await;
}

#[tokio::test]
async fn sigint_shuts_down_gracefully_without_wills_and_exits_0() {
    graceful_shutdown("INT").await;
}

#[tokio::test]
async fn logs_client_connected_disconnected_and_refused() {
    let port = common::free_port();
    let mut broker = Proc::serve(port, &[]).await;
    let (mut c, _) = Raw::connect_ok(port, &raw::v311("log-c1").keep_alive(42)).await;
    let line = broker.wait_line_all(&["INFO", "client connected", "client_id=log-c1"], common::WAIT).await;
    for field in ["peer=127.0.0.1:", "protocol=", "3.1.1", "keep_alive=42"] {
        assert!(line.contains(field), "{field} missing in {line:?}");
    }
    c.disconnect(0, Props::new()).await;
    c.expect_closed(common::WAIT).await;
    broker
        .wait_line_all(&["INFO", "client disconnected: client sent DISCONNECT", "log-c1"], common::WAIT)
        .await;
    let (c5, _) = Raw::connect_ok(port, &raw::v5("log-c5").keep_alive(7)).await;
    let line = broker.wait_line_all(&["client connected", "client_id=log-c5"], common::WAIT).await;
    assert!(line.contains("5.0") && line.contains("keep_alive=7"), "{line}");
    drop(c5);
    broker.wait_line_all(&["client disconnected: ", "log-c5"], common::WAIT).await;
    // A refusal: MQTT 3.1 requires a client id.
    let (_r, ack) = Raw::connect(port, &raw::Connect::new(Version::V31, "")).await;
    assert!(matches!(ack, Packet::ConnAck { code: 0x02, .. }));
    broker.wait_line_all(&["INFO", "connection refused: "], common::WAIT).await;
}

#[tokio::test]
async fn debug_log_level_logs_every_packet() {
    let port = common::free_port();
    let mut broker = Proc::serve(port, &["--log-level", "debug"]).await;
    let (mut c, _) = Raw::connect_ok(port, &raw::v311("log-dbg")).await;
    c.publish(&raw::Publish::new("log/t", 1, 1, b"hello")).await;
    c.expect().await;
    let line = broker
        .wait_line_all(&["DEBUG", "received PUBLISH (d0, q1, r0, m1, 'log/t', ... (5 bytes))"], common::WAIT)
        .await;
    assert!(line.contains("log-dbg"), "{line}");
}

#[tokio::test]
async fn info_log_level_does_not_log_packets() {
    let port = common::free_port();
    let mut broker = Proc::serve(port, &[]).await;
    let (mut c, _) = Raw::connect_ok(port, &raw::v311("log-info")).await;
    c.publish(&raw::Publish::new("log/t", 1, 1, b"hello")).await;
    c.expect().await;
    c.disconnect(0, Props::new()).await;
    broker.wait_line_all(&["client disconnected", "log-info"], common::WAIT).await;
    assert!(!broker.log().contains("received PUBLISH"), "{}", broker.log());
}

#[tokio::test]
async fn oversized_packet_logs_a_warning_naming_the_client() {
    let port = common::free_port();
    let config = write_config("limits:\n  max_packet_size: 1KiB\n");
    let mut broker = Proc::serve(port, &["--config", &config.path]).await;
    let (mut c, _) = Raw::connect_ok(port, &raw::v5("log-big")).await;
    c.publish(&raw::Publish::new("big/t", 0, 0, &[0u8; 4000])).await;
    let before = c.expect_closed(common::WAIT).await;
    assert_eq!(raw::disconnect_code(&before), Some(0x95));
    broker.wait_line_all(&["WARN", "log-big"], common::WAIT).await;
}

#[tokio::test]
async fn unknown_config_key_fails_naming_the_key_and_line() {
    let config = write_config("limits:\n  max_connections: 5\n  max_inflite: 5\n");
    let (status, _, err) = run(&["--config", &config.path]).await;
    assert!(!status.success(), "{err}");
    assert!(err.contains("max_inflite"), "key named: {err}");
    assert!(err.contains("line 3"), "line named: {err}");
}

#[tokio::test]
async fn badly_typed_config_value_fails_naming_the_key_and_line() {
    let config = write_config("sys:\n  interval: 10s\nlimits:\n  max_inflight: lots\n");
    let (status, _, err) = run(&["--config", &config.path]).await;
    assert!(!status.success(), "{err}");
    assert!(err.contains("max_inflight"), "key named: {err}");
    assert!(err.contains("line 4"), "line named: {err}");
}

#[tokio::test]
async fn out_of_range_config_value_fails_naming_the_key_and_line() {
    let config = write_config("limits:\n  max_connections: 5\n  max_inflight: 0\n");
    let (status, _, err) = run(&["--config", &config.path, "--check-config"]).await;
    assert!(!status.success(), "{err}");
    assert!(err.contains("limits.max_inflight"), "key named: {err}");
    assert!(err.contains("line 3"), "line named: {err}");
}

#[tokio::test]
async fn check_config_prints_the_effective_config_and_exits_0() {
    let config = write_config("limits:\n  max_connections: 17\n");
    let dir = common::temp_dir("check");
    let data = dir.join("never-created");
    let (status, out, err) = run(&[
        "--config",
        &config.path,
        "--bind",
        "127.0.0.1:18830",
        "--bind",
        "127.0.0.1:18831",
        "--data-dir",
        data.to_str().unwrap(),
        "--allow-anonymous",
        "--log-level",
        "debug",
        "--check-config",
    ])
    .await;
    assert!(status.success(), "{err}");
    for want in [
        "max_connections: 17",
        "127.0.0.1:18830",
        "127.0.0.1:18831",
        "allow_anonymous: true",
        "level: debug",
        data.to_str().unwrap(),
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    assert!(
        !out.contains("1883\n") && !out.contains("127.0.0.1:1883 "),
        "--bind replaces the listeners:\n{out}"
    );
    assert!(!data.exists(), "--check-config only checks");
}

#[tokio::test]
async fn default_config_is_loopback_1883_with_anonymous_by_loopback_rule() {
    let (status, out, err) = run(&["--check-config"]).await;
    assert!(status.success(), "{err}");
    assert!(out.contains("bind: 127.0.0.1:1883"), "{out}");
    assert!(!out.contains("allow_anonymous"), "left to the loopback rule:\n{out}");
}

#[tokio::test]
async fn repeated_bind_listens_on_every_address_and_data_dir_is_created() {
    let (p1, p2) = (common::free_port(), common::free_port());
    let dir = common::temp_dir("binds");
    let data = dir.join("nested/data");
    let b1 = format!("127.0.0.1:{p1}");
    let b2 = format!("127.0.0.1:{p2}");
    let mut broker = Proc::spawn(&["--bind", &b1, "--bind", &b2, "--data-dir", data.to_str().unwrap()]);
    broker.wait_line(&b1, common::WAIT).await;
    broker.wait_line(&b2, common::WAIT).await;
    for port in [p1, p2] {
        Raw::connect_ok(port, &raw::v5("multi")).await;
    }
    assert!(Path::new(&data).is_dir(), "--data-dir created");
}

#[tokio::test]
async fn config_file_settings_apply() {
    let port = common::free_port();
    let dir = common::temp_dir("apply");
    let config = write_config(&format!(
        "listeners:\n  - bind: 127.0.0.1:{port}\nstorage:\n  data_dir: {}\nlimits:\n  max_connections: 1\n",
        dir.join("data").display()
    ));
    let mut broker = Proc::spawn(&["--config", &config.path]);
    broker.wait_line("listening on", common::WAIT).await;
    let (_first, _) = Raw::connect_ok(port, &raw::v5("cfg-1")).await;
    let (_second, ack) = Raw::connect(port, &raw::v5("cfg-2")).await;
    assert!(
        matches!(ack, Packet::ConnAck { code: 0x97, .. }),
        "limits.max_connections from the file: {ack:?}"
    );
}

#[tokio::test]
async fn allow_anonymous_flag_overrides_the_non_loopback_rule() {
    let config = write_config("listeners:\n  - bind: 0.0.0.0:1883\n");
    let (status, out, err) = run(&["--config", &config.path, "--check-config"]).await;
    assert!(status.success(), "{err}");
    assert!(!out.contains("allow_anonymous"), "{out}");
    let (status, out, err) = run(&["--config", &config.path, "--allow-anonymous", "--check-config"]).await;
    assert!(status.success(), "{err}");
    assert!(out.contains("allow_anonymous: true"), "{out}");
}
