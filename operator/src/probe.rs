//! Live bridge state for MqttBridge status, read from each broker pod's admin API
//! (`GET /api/v1/bridges`, bearer token from the broker's auth Secret).
//!
//! Fetching is behind [`BridgeProbe`] so reconcile tests can supply answers without a network;
//! [`live_state`], which turns the per-pod answers into status fields, is pure.

use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use crate::crd::BridgePodStatus;

/// How long one pod may take to answer (connect + request + body).
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest admin API answer read (a broker runs a handful of bridges, each a few hundred bytes).
const MAX_BODY: usize = 1 << 20;

/// One bridge as the broker's admin API lists it (fields the status uses; others ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BridgeItem {
    /// Bridge name (the MqttBridge's `metadata.name`).
    pub name: String,
    /// `connecting`, `connected` or `backoff`.
    pub state: String,
    /// The last connection error, if any.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Messages waiting for the remote.
    #[serde(default)]
    pub queue_depth: u64,
}

#[derive(Debug, Deserialize)]
struct BridgeList {
    items: Vec<BridgeItem>,
}

/// Where one broker pod's admin API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Pod name (reported in status).
    pub pod: String,
    /// Host name or address (in a cluster: the pod's name under the headless Service).
    pub host: String,
    /// HTTP port.
    pub port: u16,
    /// Bearer token.
    pub token: String,
}

/// Reads a broker pod's bridge list.
pub trait BridgeProbe: Send + Sync {
    /// `GET /api/v1/bridges` on `target`; the error says why in words for the status.
    fn fetch<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Vec<BridgeItem>, String>>;
}

/// The real probe: HTTP/1.1 over TCP with [`TIMEOUT`].
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpProbe;

impl BridgeProbe for HttpProbe {
    fn fetch<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Vec<BridgeItem>, String>> {
        Box::pin(async move {
            let url = format!("http://{}:{}/api/v1/bridges", target.host, target.port);
            match tokio::time::timeout(TIMEOUT, get_bridges(target)).await {
                Ok(Ok(items)) => Ok(items),
                Ok(Err(why)) => Err(format!("{url}: {why}")),
                Err(_) => Err(format!("{url}: no answer within {}s", TIMEOUT.as_secs())),
            }
        })
    }
}

async fn get_bridges(target: &Target) -> Result<Vec<BridgeItem>, String> {
    let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|err| format!("cannot connect: {err}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|err| format!("HTTP handshake failed: {err}"))?;
    // The connection task ends with the request (Connection: close) or when dropped.
    let driver = tokio::spawn(connection);
    let request = Request::get("/api/v1/bridges")
        .header(hyper::header::HOST, format!("{}:{}", target.host, target.port))
        .header(hyper::header::AUTHORIZATION, format!("Bearer {}", target.token.trim()))
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("building the request: {err}"))?;
    let result = async {
        let response = sender.send_request(request).await.map_err(|err| format!("request failed: {err}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|err| format!("reading the answer: {err}"))?
            .to_bytes();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            return Err(format!("HTTP {status}: {}", text.trim().chars().take(200).collect::<String>()));
        }
        serde_json::from_slice::<BridgeList>(&body)
            .map(|list| list.items)
            .map_err(|err| format!("unexpected answer: {err}"))
    }
    .await;
    driver.abort();
    result
}

/// One pod's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReport {
    /// Pod name.
    pub pod: String,
    /// Its bridges, or why they could not be read.
    pub result: Result<Vec<BridgeItem>, String>,
}

/// Status fields derived from the pods' answers for one bridge.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveState {
    /// `connected` when every pod that answered has the bridge connected; otherwise the state
    /// of the first pod that does not; `None` when no pod answered.
    pub state: Option<String>,
    /// The last error of the first pod whose bridge is not connected.
    pub last_error: Option<String>,
    /// Per pod, in pod order.
    pub pods: Vec<BridgePodStatus>,
    /// A sentence for a `Degraded` condition when some pod's bridge is not connected.
    pub problem: Option<String>,
}

/// State of a pod whose broker does not (yet) run the bridge: it has not reloaded the
/// new config, or refused the bridge (its log says why).
pub const NOT_RUNNING: &str = "notRunning";
/// State of a pod whose admin API did not answer.
pub const UNREACHABLE: &str = "unreachable";

/// Folds the pods' answers into the status of bridge `name`.
pub fn live_state(name: &str, reports: &[PodReport]) -> LiveState {
    let mut out = LiveState::default();
    let mut answered = false;
    let mut trouble = Vec::new();
    for report in reports {
        let pod = match &report.result {
            Ok(items) => {
                answered = true;
                match items.iter().find(|item| item.name == name) {
                    Some(item) => BridgePodStatus {
                        pod: report.pod.clone(),
                        state: item.state.clone(),
                        last_error: item.last_error.clone(),
                        queue_depth: Some(item.queue_depth),
                    },
                    None => BridgePodStatus {
                        pod: report.pod.clone(),
                        state: NOT_RUNNING.to_string(),
                        last_error: Some(
                            "the broker does not run this bridge (config not reloaded yet, or refused: see the pod's log)"
                                .to_string(),
                        ),
                        queue_depth: None,
                    },
                }
            }
            Err(why) => BridgePodStatus {
                pod: report.pod.clone(),
                state: UNREACHABLE.to_string(),
                last_error: Some(why.clone()),
                queue_depth: None,
            },
        };
        if pod.state != "connected" && pod.state != UNREACHABLE {
            if out.state.is_none() {
                out.state = Some(pod.state.clone());
                out.last_error = pod.last_error.clone();
            }
            trouble.push(match &pod.last_error {
                Some(err) => format!("{}: {} ({err})", pod.pod, pod.state),
                None => format!("{}: {}", pod.pod, pod.state),
            });
        }
        out.pods.push(pod);
    }
    if answered && out.state.is_none() {
        out.state = Some("connected".to_string());
    }
    if !trouble.is_empty() {
        out.problem = Some(format!("bridge not connected on {}", trouble.join("; ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, state: &str, err: Option<&str>) -> BridgeItem {
        BridgeItem {
            name: name.to_string(),
            state: state.to_string(),
            last_error: err.map(str::to_string),
            queue_depth: 3,
        }
    }

    fn ok(pod: &str, items: Vec<BridgeItem>) -> PodReport {
        PodReport { pod: pod.to_string(), result: Ok(items) }
    }

    #[test]
    fn all_connected_is_connected_without_a_problem() {
        let live = live_state(
            "cloud",
            &[ok("b-0", vec![item("other", "backoff", None), item("cloud", "connected", None)])],
        );
        assert_eq!(live.state.as_deref(), Some("connected"));
        assert_eq!(live.problem, None);
        assert_eq!(live.pods.len(), 1);
        assert_eq!(live.pods[0].queue_depth, Some(3));
    }

    #[test]
    fn the_first_pod_in_trouble_names_state_and_error() {
        let live = live_state(
            "cloud",
            &[
                ok("b-0", vec![item("cloud", "connected", None)]),
                ok("b-1", vec![item("cloud", "backoff", Some("connection refused"))]),
            ],
        );
        assert_eq!(live.state.as_deref(), Some("backoff"));
        assert_eq!(live.last_error.as_deref(), Some("connection refused"));
        assert_eq!(
            live.problem.as_deref(),
            Some("bridge not connected on b-1: backoff (connection refused)")
        );
    }

    #[test]
    fn unreachable_pods_are_listed_but_do_not_decide_the_state() {
        let live = live_state(
            "cloud",
            &[
                PodReport { pod: "b-0".into(), result: Err("no answer".into()) },
                ok("b-1", vec![item("cloud", "connected", None)]),
            ],
        );
        assert_eq!(live.state.as_deref(), Some("connected"));
        assert_eq!(live.pods[0].state, UNREACHABLE);
        assert_eq!(live.pods[0].last_error.as_deref(), Some("no answer"));
        assert_eq!(live.problem, None);
    }

    #[test]
    fn nobody_answering_leaves_the_state_unknown() {
        let live = live_state("cloud", &[PodReport { pod: "b-0".into(), result: Err("refused".into()) }]);
        assert_eq!(live.state, None);
        assert_eq!(live.problem, None);
    }

    #[test]
    fn a_pod_without_the_bridge_is_not_running_it() {
        let live = live_state("cloud", &[ok("b-0", vec![item("other", "connected", None)])]);
        assert_eq!(live.state.as_deref(), Some(NOT_RUNNING));
        assert!(live.problem.as_deref().is_some_and(|p| p.contains("b-0: notRunning")));
    }
}
