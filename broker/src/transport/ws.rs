//! MQTT over WebSocket (MQTT 5.0 §6, MQTT 3.1.1 §6): an HTTP/1.1 upgrade on the listener's
//! path, then every binary frame carries MQTT bytes. Browsers and MQTT.js need this.

use std::rc::Rc;

use ntex::http::body::BodySize;
use ntex::http::header::{self, HeaderValue};
use ntex::http::{HttpService, Request, Response, h1};
use ntex::io::{Filter, Io, Layer};
use ntex::service::cfg::SharedCfg;
use ntex::service::{Pipeline, ServiceFactory, chain_factory, fn_factory_with_config, fn_service};
use ntex::util::Ready;
use ntex::ws::{self, WsTransport};

use super::TransportError;

/// Subprotocols a client may ask for: `mqtt` (3.1.1 and 5.0) and `mqttv3.1` (3.1).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// The subprotocol to answer with: the first one the client offered that MQTT defines.
fn pick_subprotocol(req: &Request) -> Option<&'static str> {
    req.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL).filter_map(|v| v.to_str().ok()).find_map(|list| {
        list.split(',')
            .map(str::trim)
            .find_map(|offered| SUBPROTOCOLS.iter().copied().find(|p| *p == offered))
    })
}

/// Answers a refused upgrade with `response` and gives up the connection.
async fn refuse<F: Filter>(io: &Io<F>, codec: &h1::Codec, response: Response<()>) {
    let _ = io.send(h1::Message::Item((response, BodySize::Empty)), codec).await;
}

/// The upgrade on `path`: answers 101 with the MQTT subprotocol and switches the connection
/// to WebSocket frames of up to `max_frame` bytes.
fn upgrade<F: Filter>(
    path: Rc<str>,
    max_frame: usize,
) -> impl ServiceFactory<
    (Request, Io<F>, h1::Codec),
    SharedCfg,
    Response = Io<Layer<WsTransport, F>>,
    Error = TransportError,
    InitError = (),
> {
    fn_service(move |(req, io, codec): (Request, Io<F>, h1::Codec)| {
        let path = path.clone();
        async move {
            if req.path() != &*path {
                refuse(&io, &codec, Response::NotFound().finish().drop_body()).await;
                return Err(TransportError::WebSocket(format!(
                    "no MQTT endpoint at {} (use {path})",
                    req.path()
                )));
            }
            let mut response = match ws::handshake(req.head()) {
                Ok(response) => response,
                Err(err) => {
                    refuse(&io, &codec, Response::BadRequest().finish().drop_body()).await;
                    return Err(TransportError::WebSocket(format!("bad WebSocket handshake: {err}")));
                }
            };
            if let Some(protocol) = pick_subprotocol(&req) {
                response.header(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
            }
            io.send(h1::Message::Item((response.finish().drop_body(), BodySize::Empty)), &codec)
                .await
                .map_err(|e| TransportError::WebSocket(format!("cannot answer the upgrade: {e:?}")))?;
            Ok(WsTransport::create(io, ws::Codec::new().max_size(max_frame)))
        }
    })
}

/// HTTP/1.1 with the WebSocket upgrade on `path` feeding the MQTT service `mqtt()` builds;
/// any other request gets 404.
pub fn websocket<F, M>(
    path: Rc<str>,
    max_frame: usize,
    mqtt: impl Fn() -> M + 'static,
) -> impl ServiceFactory<Io<F>, SharedCfg, Response = (), Error = TransportError, InitError = ()>
where
    F: Filter,
    M: ServiceFactory<
            Io<Layer<WsTransport, F>>,
            SharedCfg,
            Response = (),
            Error = TransportError,
            InitError = (),
        > + 'static,
{
    let mqtt = Rc::new(mqtt);
    HttpService::new(|_req: Request| {
        Ready::Ok::<_, std::io::Error>(Response::NotFound().body("this port serves MQTT over WebSocket"))
    })
    .h1_control(fn_factory_with_config(move |cfg: SharedCfg| {
        let (path, mqtt) = (path.clone(), mqtt());
        async move {
            let session =
                Pipeline::new(chain_factory(upgrade::<F>(path, max_frame)).and_then(mqtt).create(cfg).await?);
            Ok::<_, ()>(fn_service(move |msg: h1::Control<F, std::io::Error>| {
                let ack = match msg {
                    h1::Control::Upgrade(upgrade) => {
                        let session = session.clone();
                        upgrade.handle(move |req, io, codec| async move {
                            if let Err(err) = session.call((req, io, codec)).await {
                                tracing::debug!("WebSocket connection ended: {err}");
                            }
                        })
                    }
                    other => other.ack(),
                };
                Ready::Ok::<_, std::io::Error>(ack)
            }))
        }
    }))
    .map_err(|e| TransportError::Http(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntex::http::test::TestRequest;

    #[test]
    fn subprotocol_is_the_first_mqtt_one_offered() {
        let req = TestRequest::default().header(header::SEC_WEBSOCKET_PROTOCOL, "chat, mqtt").finish();
        assert_eq!(pick_subprotocol(&req), Some("mqtt"));
        let req = TestRequest::default().header(header::SEC_WEBSOCKET_PROTOCOL, "mqttv3.1").finish();
        assert_eq!(pick_subprotocol(&req), Some("mqttv3.1"));
        let req = TestRequest::default().header(header::SEC_WEBSOCKET_PROTOCOL, "chat").finish();
        assert_eq!(pick_subprotocol(&req), None);
        assert_eq!(pick_subprotocol(&TestRequest::default().finish()), None);
    }
}
