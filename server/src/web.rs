//! The web listener (specs/browser.md §1, SRV-WEB-01..03): the browser client's page
//! ([`veil_page`]) and the same two services the gRPC listener serves, translated from gRPC-Web
//! (`tonic-web`) so a page can call them over HTTP/1.1 with `fetch`. No separate gateway: the
//! services are the very ones of the gRPC listener, so a browser and a native participant
//! share rooms, SFU sessions and limits.
//!
//! - `GET /` and `GET /room/<room>`: the page (the token travels in the URL's fragment, which
//!   browsers never send, so it reaches no log);
//! - `GET /assets/<file>`: its scripts, styles and wasm;
//! - `POST /veil.keys.v1.KeyService/*`, `POST /veil.sfu.v1.Sfu/*`: gRPC-Web.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use tonic::service::Routes;
use tonic_web::GrpcWebLayer;
use tower_layer::Layer as _;
use veil_keys::KeyService;
use veil_proto::keys::v1::key_service_server::KeyServiceServer;
use veil_proto::sfu::v1::sfu_server::SfuServer;
use veil_sfu::grpc::SfuService;

/// What the page may load and call: its own origin only (SRV-WEB-02). `wasm-unsafe-eval`
/// lets it compile its wasm module, nothing more.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; \
     worker-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The routes of the web listener: the page, and gRPC-Web in front of the services given.
#[must_use]
pub fn routes(
    keys: Option<KeyServiceServer<KeyService>>,
    sfu: Option<SfuServer<SfuService>>,
) -> Routes {
    let mut routes = Routes::default();
    if let Some(k) = keys {
        routes = routes.add_service(GrpcWebLayer::new().layer(k));
    }
    if let Some(s) = sfu {
        routes = routes.add_service(GrpcWebLayer::new().layer(s));
    }
    let router = routes
        .into_axum_router()
        .route("/", get(page))
        .route("/room/{room}", get(page))
        .route("/assets/{file}", get(page))
        // Not the gRPC listener's `UNIMPLEMENTED` with 200: this listener serves a browser.
        .fallback(not_found);
    Routes::from(router)
}

async fn not_found() -> Response {
    let mut r = Response::new(Body::from("not found\n"));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

/// One of the page's files, or 404 (SRV-WEB-03).
async fn page(req: Request) -> Response {
    let Some(a) = veil_page::asset(req.uri().path()) else {
        return not_found().await;
    };
    let mut r = Response::new(Body::from(a.body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    // Built with the server: a new server may bring new files under the same names.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The link a person opens to join `room` with `token`, on the web listener at `addr`.
#[must_use]
pub fn room_link(addr: std::net::SocketAddr, room: &str, token: &str) -> String {
    let mut encoded = String::with_capacity(room.len());
    for b in room.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("http://{addr}/room/{encoded}#token={token}")
}
