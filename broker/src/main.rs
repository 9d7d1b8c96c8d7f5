//! `fleetmq-broker`: the FleetMQ MQTT broker.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use fleetmq_config::{BrokerConfig, Listener};

/// jemalloc rather than glibc malloc. A connection's long-lived allocations are made between
/// the handshake's short-lived ones; glibc's heap carves the former out of the holes the
/// latter leave, so an idle connection cost 2.2 to 2.7 KiB of RSS depending on how fast
/// clients connected, against 1.9 KiB with jemalloc's size classes at any rate (10,000
/// connections, issue 6, BENCHMARKS.md). Throughput was the same or better.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// FleetMQ MQTT broker (MQTT 3.1, 3.1.1 and 5.0).
///
/// Without --config it listens on 127.0.0.1:1883 and accepts anonymous clients (loopback
/// only). Every config key is documented in docs/configuration.md.
#[derive(Debug, Clone, Parser)]
#[command(name = "fleetmq-broker", version)]
struct Cli {
    /// YAML config file.
    #[arg(long, short = 'c', env = "FLEETMQ_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on ADDR:PORT instead of the configured listeners (repeatable).
    #[arg(long, value_name = "ADDR:PORT")]
    bind: Vec<SocketAddr>,
    /// Serve /metrics, /healthz, /readyz and the admin API on ADDR:PORT (overrides
    /// http.bind and turns http.enabled on; port 0 picks a free port, logged at start).
    #[arg(long, value_name = "ADDR:PORT")]
    http_bind: Option<SocketAddr>,
    /// Directory for durable state (overrides storage.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Accept clients without credentials (overrides auth.allow_anonymous).
    #[arg(long)]
    allow_anonymous: bool,
    /// Log level or tracing filter (overrides log.level), e.g. `debug` to log every packet.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// This node's name in the cluster (overrides cluster.node_name; ignored without a
    /// cluster section). In Kubernetes, the pod name from the downward API.
    #[arg(long, env = "FLEETMQ_NODE_NAME", value_name = "NAME")]
    cluster_node_name: Option<String>,
    /// How cluster peers reach this node, a DNS name or IP (overrides
    /// cluster.advertise_host; ignored without a cluster section).
    #[arg(long, env = "FLEETMQ_ADVERTISE_HOST", value_name = "HOST")]
    cluster_advertise_host: Option<String>,
    /// Validate the configuration, print the effective config and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Subcommands; without one the broker runs.
#[derive(Debug, Clone, clap::Subcommand)]
enum Command {
    /// Add, update or delete a user in a Mosquitto-format password file (argon2id hashes),
    /// like mosquitto_passwd. See docs/security.md.
    Passwd(PasswdCli),
}

/// `fleetmq-broker passwd [-c] [-b] [-D] FILE USERNAME [PASSWORD]`.
#[derive(Debug, Clone, clap::Args)]
struct PasswdCli {
    /// Create the file, overwriting an existing one (FILE `-` prints the line instead).
    #[arg(short = 'c')]
    create: bool,
    /// Batch mode: take PASSWORD from the command line (visible in `ps` and shell history).
    #[arg(short = 'b')]
    batch: bool,
    /// Delete USERNAME.
    #[arg(short = 'D')]
    delete: bool,
    /// The password file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The user.
    #[arg(value_name = "USERNAME")]
    username: String,
    /// The password (with -b). Without -b it is asked twice on the terminal, or read as one
    /// line from standard input when that is not a terminal.
    #[arg(value_name = "PASSWORD")]
    password: Option<String>,
}

fn load(cli: &Cli) -> anyhow::Result<BrokerConfig> {
    let mut config = match &cli.config {
        Some(path) => BrokerConfig::load(path)?,
        None => BrokerConfig::default(),
    };
    if !cli.bind.is_empty() {
        config.listeners = cli.bind.iter().map(|addr| Listener::mqtt(*addr)).collect();
    }
    if let Some(addr) = cli.http_bind {
        config.http.enabled = true;
        config.http.bind = addr;
    }
    if let Some(dir) = &cli.data_dir {
        config.storage.data_dir = dir.clone();
    }
    if cli.allow_anonymous {
        config.auth.allow_anonymous = Some(true);
    }
    if let Some(level) = &cli.log_level {
        config.log.level = level.clone();
    }
    if let Some(cluster) = &mut config.cluster {
        if let Some(name) = &cli.cluster_node_name {
            cluster.node_name = Some(name.clone());
        }
        if let Some(host) = &cli.cluster_advertise_host {
            cluster.advertise_host = Some(host.clone());
        }
    }
    config.validate()?;
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Passwd(p)) = &cli.command {
        let args = fleetmq_broker::auth::passwd::PasswdArgs {
            create: p.create,
            batch: p.batch,
            delete: p.delete,
            file: p.file.clone(),
            username: p.username.clone(),
            password: p.password.clone(),
        };
        return fleetmq_broker::auth::passwd::run(&args).map_err(Into::into);
    }
    let config = load(&cli)?;
    if cli.check_config {
        print!("{}", config.to_yaml());
        return Ok(());
    }
    // Held to the end of main: dropping it flushes buffered trace spans.
    let _telemetry = fleetmq_broker::telemetry::init(&config.log)?;
    std::fs::create_dir_all(&config.storage.data_dir)
        .with_context(|| format!("cannot create storage.data_dir {}", config.storage.data_dir.display()))?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        anonymous = config.anonymous_allowed(),
        persistence = config.storage.persistence,
        data_dir = %config.storage.data_dir.display(),
        "starting FleetMQ broker"
    );
    // The file is read again on change or SIGHUP, with the same command-line overrides.
    let source = cli.config.clone().map(|path| {
        let cli = cli.clone();
        let reload: fleetmq_broker::reload::ConfigSource =
            Box::new(move || load(&cli).map_err(|e| format!("{e:#}")));
        (path, reload)
    });
    fleetmq_broker::server::run(config, source)
}
