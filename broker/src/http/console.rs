//! The web console: static HTML/CSS/JS under `/console/`, embedded in the binary (no runtime
//! download, no Node needed to build). The pages hold no data; everything they show comes from
//! the admin API with the token the user logs in with (see docs/console.md), so the assets
//! themselves are served without a token.
//!
//! Every URL inside the assets is relative, so the console also works behind an ingress that
//! serves the broker under a path prefix.

use std::sync::LazyLock;

use ntex::http::{Method, Request, Response, StatusCode, header};
use sha2::{Digest, Sha256};

/// Where the console lives (with the trailing slash the relative URLs need).
pub const PREFIX: &str = "/console/";

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Path below [`PREFIX`] (`""` is the index page).
    pub path: &'static str,
    /// `Content-Type` it is served with.
    pub content_type: &'static str,
    /// The bytes.
    pub body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// The console's files.
pub static ASSETS: &[Asset] = &[
    Asset { path: "", content_type: HTML, body: include_bytes!("../../console/index.html") },
    Asset { path: "app.js", content_type: JS, body: include_bytes!("../../console/app.js") },
    Asset { path: "pages.js", content_type: JS, body: include_bytes!("../../console/pages.js") },
    Asset { path: "tester.js", content_type: JS, body: include_bytes!("../../console/tester.js") },
    Asset { path: "style.css", content_type: CSS, body: include_bytes!("../../console/style.css") },
    Asset { path: "icon.svg", content_type: SVG, body: include_bytes!("../../console/icon.svg") },
    // MQTT.js browser bundle (MIT, vendored; see broker/console/README.md).
    Asset {
        path: "vendor/mqtt.esm.js",
        content_type: JS,
        body: include_bytes!("../../console/vendor/mqtt.esm.js"),
    },
];

/// Strong validators, one per asset (same order as [`ASSETS`]): the file's SHA-256, so a
/// browser revalidates cheaply and sees a new version right after an upgrade.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body);
            let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .collect()
});

/// The pages may only load their own scripts and styles and talk to their own origin (the admin
/// API) and to MQTT over WebSocket (the tester), so an injected string cannot run code.
/// `worker-src blob:`: MQTT.js runs its keepalive timer in a worker made from a blob, so pings
/// keep going while the tab is in the background (browsers throttle timers there).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; worker-src 'self' blob:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is the console's (or `/`, which leads to it).
pub fn is_console_path(path: &str) -> bool {
    path == "/" || path == "/console" || path.starts_with(PREFIX)
}

/// Serves a console path (see [`is_console_path`]).
pub fn serve(req: &Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return super::method_not_allowed("GET, HEAD");
    }
    let path = req.path();
    // Relative redirects: behind a prefix (`/mqtt-admin/` → `/`) the browser resolves them
    // against the URL it used, which an absolute `/console/` would lose.
    match path {
        "/" => return redirect("console/"),
        "/console" => return redirect("console/"),
        _ => {}
    }
    let rest = &path[PREFIX.len()..];
    let Some(index) = ASSETS.iter().position(|a| a.path == rest) else {
        return super::text(StatusCode::NOT_FOUND, "not found\n");
    };
    let asset = &ASSETS[index];
    let etag = &ETAGS[index];
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        Response::build(StatusCode::NOT_MODIFIED).finish()
    } else {
        Response::build(StatusCode::OK).content_type(asset.content_type).body(asset.body)
    };
    let headers = response.headers_mut();
    let value = |s: &str| header::HeaderValue::from_str(s).ok();
    if let Some(etag) = value(etag) {
        headers.insert(header::ETAG, etag);
    }
    // Revalidate every time (the ETag makes that a 304): file names carry no version, and an
    // upgraded broker must not run yesterday's script against today's API.
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
    headers.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(CSP));
    response
}

/// `308` to a relative `location`.
fn redirect(location: &'static str) -> Response {
    let mut response = Response::build(StatusCode::PERMANENT_REDIRECT).finish();
    response.headers_mut().insert(header::LOCATION, header::HeaderValue::from_static(location));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `src=`/`href=`/`import ... from` target in the assets is relative (no leading `/`,
    /// no scheme), which is what keeps the console working behind a path prefix and free of
    /// CDNs.
    #[test]
    fn asset_urls_are_relative() {
        let mut checked = 0;
        for asset in ASSETS.iter().filter(|a| !a.path.starts_with("vendor/")) {
            let text = std::str::from_utf8(asset.body).expect("UTF-8 asset");
            for marker in ["src=\"", "href=\"", "from \"", "import(\"", "url("] {
                for (at, _) in text.match_indices(marker) {
                    let target = text[at + marker.len()..].trim_start_matches(['"', '\'']);
                    let end = target.find(['"', '\'', ')', ' ', '\n']).unwrap_or(target.len());
                    let target = &target[..end];
                    if target.starts_with('#') || target.starts_with("data:") || target.starts_with("${") {
                        continue;
                    }
                    checked += 1;
                    assert!(
                        !target.starts_with('/') && !target.contains("://"),
                        "{}: {marker}{target} is not relative",
                        asset.path
                    );
                }
            }
        }
        assert!(checked >= 5, "the scan found the asset references ({checked})");
    }

    #[test]
    fn every_asset_has_a_distinct_path_and_etag() {
        let mut paths: Vec<_> = ASSETS.iter().map(|a| a.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ASSETS.len());
        let mut etags = ETAGS.clone();
        etags.sort();
        etags.dedup();
        assert_eq!(etags.len(), ASSETS.len());
    }

    #[test]
    fn console_paths() {
        assert!(is_console_path("/"));
        assert!(is_console_path("/console"));
        assert!(is_console_path("/console/app.js"));
        assert!(!is_console_path("/consoles"));
        assert!(!is_console_path("/metrics"));
    }
}
