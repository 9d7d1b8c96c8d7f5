//! Logging and opt-in OpenTelemetry trace export.
//!
//! Trace spans (`mqtt.connect`, `mqtt.publish`, `store.commit`) use the target [`SPANS`]. Only
//! the OTLP layer enables that target, so with export off their callsites are disabled once
//! and cost a cached branch; the log output never shows them. Export is configured the
//! OpenTelemetry way, by the standard `OTEL_*` environment variables (see
//! docs/configuration.md "OpenTelemetry").

use std::io::IsTerminal;
use std::sync::OnceLock;

use fleetmq_config::{Log as LogConfig, LogFormat};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, Registry, reload};

/// The `tracing` target of spans meant for trace export.
pub const SPANS: &str = "fleetmq::trace";

/// A setting a person got wrong, named.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `log.level` (or `RUST_LOG`) is not a level or filter.
    #[error("invalid value for `log.level`: {value:?}: {reason}")]
    LogLevel { value: String, reason: String },
    /// An `OTEL_*` variable has a value this build cannot honour.
    #[error("invalid {var}={value:?}: {reason}")]
    Env { var: &'static str, value: String, reason: &'static str },
    /// The exporter could not be built from otherwise valid settings.
    #[error("cannot start the OTLP trace exporter: {0}")]
    Exporter(String),
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The wire format.
    pub protocol: Protocol,
    /// `service.name` from `OTEL_SERVICE_NAME`, if set.
    pub service_name: Option<String>,
}

impl OtlpSettings {
    /// Reads the settings through `var` (the process environment in the binary). `Ok(None)`:
    /// export is off — no OTLP endpoint variable, `OTEL_TRACES_EXPORTER=none` or
    /// `OTEL_SDK_DISABLED=true`. Endpoint, headers, timeout, compression, sampler and batch
    /// variables are read by the OpenTelemetry SDK itself.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, TelemetryError> {
        let get = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let explicit = match get("OTEL_TRACES_EXPORTER").as_deref() {
            None => false,
            Some("none") => return Ok(None),
            Some("otlp") => true,
            Some(other) => {
                return Err(TelemetryError::Env {
                    var: "OTEL_TRACES_EXPORTER",
                    value: other.to_string(),
                    reason: "FleetMQ exports traces with `otlp` only (or `none`)",
                });
            }
        };
        let mut endpoint = false;
        for name in ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
            if let Some(value) = get(name) {
                if !(value.starts_with("http://") || value.starts_with("https://")) {
                    return Err(TelemetryError::Env {
                        var: name,
                        value,
                        reason: "expected an http:// or https:// URL, e.g. http://otel-collector:4318",
                    });
                }
                endpoint = true;
            }
        }
        if !endpoint && !explicit {
            return Ok(None);
        }
        let (var_name, value) = match get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(v)),
            None => ("OTEL_EXPORTER_OTLP_PROTOCOL", get("OTEL_EXPORTER_OTLP_PROTOCOL")),
        };
        let protocol = match value.as_deref() {
            None | Some("http/protobuf") => Protocol::HttpBinary,
            Some("http/json") => Protocol::HttpJson,
            Some(other) => {
                return Err(TelemetryError::Env {
                    var: var_name,
                    value: other.to_string(),
                    reason: if other == "grpc" {
                        "FleetMQ exports over HTTP: use http/protobuf (the collector's port 4318)"
                    } else {
                        "expected http/protobuf or http/json"
                    },
                });
            }
        };
        Ok(Some(Self { protocol, service_name: get("OTEL_SERVICE_NAME") }))
    }
}

/// Keeps trace export running; dropping it flushes the spans still buffered.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!("flushing OpenTelemetry spans at exit failed: {err}");
        }
    }
}

/// The `log` target of ntex-server's on-accept hook.
const NTEX_ACCEPT_HOOK: &str = "ntex_server::net::factory";

/// The live log filter, swapped by [`set_log_level`] on config reload.
static LOG_FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Puts a reloaded `log.level` in force. `Ok(false)`: nothing changed, because logging was not
/// initialised by [`init`] (library use, tests) or `RUST_LOG` is set and keeps precedence.
pub fn set_log_level(level: &str) -> Result<bool, TelemetryError> {
    let Some(handle) = LOG_FILTER.get() else { return Ok(false) };
    if std::env::var_os("RUST_LOG").is_some() {
        return Ok(false);
    }
    let filter = log_filter(level)?;
    handle
        .reload(filter)
        .map_err(|e| TelemetryError::LogLevel { value: level.to_string(), reason: e.to_string() })?;
    Ok(true)
}

/// The log filter for `log.level`: a bare level applies to FleetMQ (libraries stay at warn);
/// anything else is a full `tracing` filter. `RUST_LOG` wins when set.
fn log_filter(level: &str) -> Result<EnvFilter, TelemetryError> {
    let level = level.trim();
    let directives = match level {
        "error" | "warn" | "info" | "debug" | "trace" => format!("warn,fleetmq_broker={level}"),
        filter => filter.to_string(),
    };
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(&directives))
        .map_err(|e| TelemetryError::LogLevel { value: level.to_string(), reason: e.to_string() })?;
    // Trace spans are for the exporter; in log lines they would only add noise. ntex-server
    // reports every plain TCP connection FleetMQ takes over as a failed on-accept callback
    // (`transport::PlainListeners`); the target logs nothing else that FleetMQ can cause (its
    // listener factories cannot fail and it has no worker-start callbacks).
    Ok(filter
        .add_directive(format!("{SPANS}=off").parse().expect("static directive"))
        .add_directive(format!("{NTEX_ACCEPT_HOOK}=off").parse().expect("static directive")))
}

fn tracer_provider(settings: &OtlpSettings) -> Result<SdkTracerProvider, TelemetryError> {
    // The exporter's blocking HTTP client verifies https:// collectors with rustls, whose
    // process-wide provider must be chosen once (ring, as the listeners use).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(settings.protocol)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let detectors: [Box<dyn ResourceDetector>; 2] =
        [Box::new(TelemetryResourceDetector), Box::new(EnvResourceDetector::new())];
    let mut resource = Resource::builder_empty()
        .with_service_name("fleetmq-broker")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_detectors(&detectors);
    if let Some(name) = &settings.service_name {
        resource = resource.with_service_name(name.clone());
    }
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

/// Installs the global subscriber: logs to stderr per `config`, and OTLP trace export when the
/// environment asks for it.
pub fn init(config: &LogConfig) -> Result<Telemetry, TelemetryError> {
    let (filter, handle) = reload::Layer::new(log_filter(&config.level)?);
    let settings = OtlpSettings::from_env(|name| std::env::var(name).ok())?;
    let provider = settings.as_ref().map(tracer_provider).transpose()?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match config.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let otlp = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("fleetmq-broker"))
            .with_filter(Targets::new().with_target(SPANS, Level::INFO))
    });
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otlp).init();
    let _ = LOG_FILTER.set(handle);
    if let Some(settings) = &settings {
        let protocol = if settings.protocol == Protocol::HttpJson { "http/json" } else { "http/protobuf" };
        tracing::info!(protocol, "exporting OpenTelemetry traces over OTLP");
    }
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<OtlpSettings>, TelemetryError> {
        OtlpSettings::from_env(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert_eq!(settings(&[]).unwrap(), None);
        assert_eq!(settings(&[("OTEL_SERVICE_NAME", "x")]).unwrap(), None);
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(), None);
        assert_eq!(settings(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]).unwrap(), None);
    }

    #[test]
    fn on_with_an_endpoint_and_http_protobuf_by_default() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c:4318/v1/traces")]).unwrap();
        assert_eq!(s, Some(OtlpSettings { protocol: Protocol::HttpBinary, service_name: None }));
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "edge-broker"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, Protocol::HttpJson);
        assert_eq!(s.service_name.as_deref(), Some("edge-broker"));
        // The signal-specific variable wins; `otlp` alone means the default local collector.
        let s = settings(&[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, Protocol::HttpBinary);
    }

    #[test]
    fn unusable_values_are_named() {
        let err = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318"), ("OTEL_TRACES_EXPORTER", "otlp")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT=\"c:4318\"") && err.contains("http://"), "{err}");
        let err = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\"") && err.contains("4318"), "{err}");
        let err = settings(&[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err().to_string();
        assert!(err.contains("OTEL_TRACES_EXPORTER=\"zipkin\""), "{err}");
    }

    #[test]
    fn spans_stay_out_of_the_logs_even_at_trace_level() {
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(log_filter("trace").unwrap()),
        );
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::enabled!(target: "fleetmq_broker::core", Level::TRACE));
            assert!(!tracing::span_enabled!(target: SPANS, Level::INFO));
        });
    }

    #[test]
    fn bad_log_level_is_named() {
        let err = log_filter("info,=[").unwrap_err().to_string();
        assert!(err.contains("log.level"), "{err}");
    }
}
