//! The operator's own Prometheus metrics and its `/metrics` + `/healthz` HTTP endpoint (hyper,
//! already in the dependency tree through kube; no web framework).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

/// Reconcile counters, durations and errors per controller, plus leadership.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles started, by controller (`mqttbroker`, `mqttuser`, `mqttbridge`).
    pub reconciliations: IntCounterVec,
    /// Failed reconciles, by controller and error kind.
    pub failures: IntCounterVec,
    /// Reconcile duration in seconds, by controller.
    pub duration: HistogramVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new("fleetmq_operator_reconciliations_total", "Reconciles started"),
            &["controller"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new("fleetmq_operator_reconcile_errors_total", "Reconciles that failed"),
            &["controller", "error"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new("fleetmq_operator_reconcile_duration_seconds", "Reconcile duration")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["controller"],
        )
        .expect("valid metric");
        let leader = IntGauge::new("fleetmq_operator_leader", "1 while this replica is the leader")
            .expect("valid metric");
        for c in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            reconciliations,
            failures,
            duration,
            leader,
            ready: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Starts timing one reconcile; observe the duration with [`ReconcileTimer::finish`].
    pub fn reconcile(&self, controller: &str) -> ReconcileTimer {
        self.reconciliations.with_label_values(&[controller]).inc();
        ReconcileTimer { metrics: self.clone(), controller: controller.to_string(), start: Instant::now() }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding never fails");
        String::from_utf8(buf).unwrap_or_default()
    }

    /// `/healthz` answers 503 after this is set to false (e.g. a lost Lease before exit).
    pub fn set_healthy(&self, healthy: bool) {
        self.ready.store(healthy, Ordering::Relaxed);
    }
}

/// Times one reconcile.
#[derive(Debug)]
pub struct ReconcileTimer {
    metrics: Metrics,
    controller: String,
    start: Instant,
}

impl ReconcileTimer {
    /// Records the duration and, on failure, the error kind.
    pub fn finish(self, error: Option<&str>) {
        self.metrics
            .duration
            .with_label_values(&[&self.controller])
            .observe(self.start.elapsed().as_secs_f64());
        if let Some(kind) = error {
            self.metrics.failures.with_label_values(&[&self.controller, kind]).inc();
        }
    }
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", metrics.encode()),
        "/healthz" | "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "text/plain", "ok\n".to_string())
        }
        "/healthz" | "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "unhealthy\n".to_string()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Binds the HTTP endpoint; returns the bound address (port 0 picks a free one) and the
/// serving future.
pub async fn serve(
    metrics: Metrics,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()> + Send)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let fut = async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(%err, "metrics endpoint accept failed");
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = respond(&metrics, &req);
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(err) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%err, "metrics connection ended with an error");
                }
            });
        }
    };
    Ok((local, fut))
}
