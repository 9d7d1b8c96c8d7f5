//! `fleetmq-operator`: the Kubernetes operator for FleetMQ.
//!
//! - `run` (default): the controllers, with leader election, `/metrics` and `/healthz`.
//! - `crd`: prints the CRDs (or writes one file per kind with `--out-dir`).
//! - `render -f FILE|DIR`: runs the builders offline and prints every manifest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fleetmq_operator::auth::PasswordHasher;
use fleetmq_operator::leader::{LeaderElector, LeaseConfig};
use fleetmq_operator::metrics::Metrics;
use fleetmq_operator::probe::{self, BridgeProbe as _};
use fleetmq_operator::reconcile::Context;
use fleetmq_operator::{controller, crd, names, render};
use kube::runtime::events::{Recorder, Reporter};

#[derive(Parser)]
#[command(name = "fleetmq-operator", version, about = "Kubernetes operator for the FleetMQ MQTT broker")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (the default).
    Run(RunArgs),
    /// Print the CustomResourceDefinitions.
    Crd {
        /// Write one file per kind (`<plural>.fleetmq.io.yaml`) into this directory instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Render the objects the operator would create for MqttBroker/MqttUser/MqttBridge YAML.
    Render {
        /// A YAML file or a directory of them (repeatable).
        #[arg(short = 'f', long = "filename", required = true, value_name = "FILE|DIR")]
        files: Vec<PathBuf>,
        /// Namespace for objects that name none.
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// Also write each broker's broker.yaml to `<DIR>/<namespace>_<name>.yaml`.
        #[arg(long, value_name = "DIR")]
        config_dir: Option<PathBuf>,
    },
    /// Ask one broker's admin API for a bridge's live state, as the MqttBridge status shows it
    /// (the same request the operator makes to every broker pod).
    BridgeState {
        /// Bridge name.
        bridge: String,
        /// Broker host (a pod name under the headless Service in a cluster).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// The broker's HTTP port.
        #[arg(long, default_value_t = 9090)]
        port: u16,
        /// File with the admin token (the `admin-token` key of the broker's auth Secret).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
    },
}

#[derive(clap::Args, Default)]
struct RunArgs {
    /// Namespaces to watch, comma-separated; empty = all namespaces.
    #[arg(long, env = "FLEETMQ_WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Address of the /metrics and /healthz endpoint.
    #[arg(long, env = "FLEETMQ_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: Option<SocketAddr>,
    /// Broker image for MqttBrokers without spec.image.
    #[arg(long, env = "FLEETMQ_BROKER_IMAGE")]
    broker_image: Option<String>,
    /// OTLP/HTTP collector the broker pods export traces to (e.g. http://otel-collector:4318);
    /// unset: broker trace export stays off.
    #[arg(long, env = "FLEETMQ_BROKER_OTLP_ENDPOINT")]
    broker_otlp_endpoint: Option<String>,
    /// Disable leader election (only for a single replica).
    #[arg(long)]
    no_leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "fleetmq-operator-leader")]
    lease_name: String,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format: `json` (one object per line, for log collectors) or `text`.
    #[arg(long, env = "FLEETMQ_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

/// The operator's log line format.
#[derive(Clone, Copy, Default, clap::ValueEnum)]
enum LogFormat {
    #[default]
    Json,
    Text,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::Crd { out_dir: None } => {
            print!("{}", crd::crds_yaml());
            Ok(())
        }
        Command::Crd { out_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for def in crd::all_crds() {
                let name = def.metadata.name.clone().unwrap_or_default();
                let path = dir.join(format!("{name}.yaml"));
                std::fs::write(&path, crd::crd_yaml(&def))
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Render { files, namespace, config_dir } => {
            render_cmd(&files, &namespace, config_dir.as_deref())
        }
        Command::BridgeState { bridge, host, port, token_file } => {
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("reading --token-file {}", token_file.display()))?;
            let target = probe::Target { pod: host.clone(), host, port, token: token.trim().to_string() };
            let report =
                tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
                    probe::PodReport {
                        pod: target.pod.clone(),
                        result: probe::HttpProbe.fetch(&target).await,
                    }
                });
            let live = probe::live_state(&bridge, std::slice::from_ref(&report));
            let status = fleetmq_operator::crd::MqttBridgeStatus {
                state: live.state,
                last_error: live.last_error,
                pods: live.pods,
                ..Default::default()
            };
            println!("{}", serde_json::to_string_pretty(&status)?);
            match report.result {
                Ok(_) => Ok(()),
                Err(why) => Err(anyhow::anyhow!("{why}")),
            }
        }
        Command::Run(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
        }
    }
}

fn render_cmd(
    files: &[PathBuf],
    namespace: &str,
    config_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let input = render::load(files, namespace)?;
    let output = render::render(&input, &PasswordHasher::default())?;
    for warning in &output.warnings {
        eprintln!("warning: {warning}");
    }
    if let Some(dir) = config_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (ns, name, yaml) in &output.configs {
            let path = dir.join(format!("{ns}_{name}.yaml"));
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    print!("{}", output.manifests);
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let logs = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn")),
    );
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
    let metrics = Metrics::new();
    if let Some(addr) = args.metrics_addr {
        let (bound, serve) = fleetmq_operator::metrics::serve(metrics.clone(), addr)
            .await
            .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
        tracing::info!(%bound, "serving /metrics and /healthz");
        tokio::spawn(serve);
    }
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("fleetmq-operator-{}", std::process::id()))
    });
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: names::FIELD_MANAGER.into(), instance: Some(identity.clone()) },
    );
    let mut ctx = Context::new(client.clone(), Some(recorder), metrics.clone());
    if let Some(image) = &args.broker_image {
        ctx = ctx.with_default_image(image.clone());
    }
    if let Some(endpoint) = args.broker_otlp_endpoint.as_ref().filter(|e| !e.is_empty()) {
        ctx = ctx.with_otlp_endpoint(endpoint.clone());
    }
    let ctx = Arc::new(ctx);
    let work = controller::run(client.clone(), ctx, args.namespaces.clone());
    if args.no_leader_election {
        work.await;
        return Ok(());
    }
    let elector = LeaderElector::new(
        kube::Api::namespaced(client, &args.lease_namespace),
        LeaseConfig::new(args.lease_name.clone(), identity),
    );
    if let Err(lost) = elector.run(work, &metrics).await {
        metrics.set_healthy(false);
        // Exit rather than keep reconciling without the lease; the Deployment restarts us as a
        // follower.
        anyhow::bail!(lost);
    }
    Ok(())
}
