//! The web listener (specs/browser.md §1, SRV-WEB-01..03) over a raw HTTP/1.1 socket: the
//! page and its files with their headers, 404s, and a gRPC-Web call to the key service.

use std::time::Duration;

use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use veil_proto::keys::v1 as pb;
use veil_testkit::server::InProcess;

/// One request on a fresh connection; the response's head (lower-cased names) and body.
async fn http(addr: std::net::SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&out[..split]).to_lowercase();
    (head, out[split + 4..].to_vec())
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: veil\r\nconnection: close\r\n\r\n").into_bytes()
}

/// A chunked body's payload.
fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + n]);
        b = &b[end + 2 + n + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_listener_serves_the_page_and_grpc_web() {
    let server = InProcess::start("web", |_| {}).await;
    let web = server
        .bound
        .web
        .expect("the loopback config has a web listener");

    // SRV-WEB-02: the page, at / and at a room's path, with its headers.
    for path in ["/", "/room/standup"] {
        let (head, body) = http(web, &get(path)).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(
            head.contains(
                "content-security-policy: default-src 'self'; script-src 'self' 'wasm-unsafe-eval'"
            ),
            "{head}"
        );
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(head.contains("referrer-policy: no-referrer"), "{head}");
        assert!(String::from_utf8_lossy(&body).contains("/assets/app.js"));
    }
    let (head, body) = http(web, &get("/assets/veil_web_bg.wasm")).await;
    assert!(head.contains("content-type: application/wasm"), "{head}");
    assert_eq!(&body[..4], b"\0asm", "a wasm module");
    let (head, _) = http(web, &get("/assets/worker.js")).await;
    assert!(head.contains("content-type: text/javascript"), "{head}");

    // SRV-WEB-03: nothing else.
    for path in ["/assets/nope.js", "/room/a/b", "/etc/passwd", "/room/"] {
        let (head, _) = http(web, &get(path)).await;
        assert!(head.starts_with("http/1.1 404"), "{path}: {head}");
    }
    let plain = b"POST /veil.keys.v1.KeyService/GetServiceInfo HTTP/1.1\r\nhost: veil\r\n\
                  content-type: text/plain\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let (head, _) = http(web, plain).await;
    assert!(!head.starts_with("http/1.1 200"), "{head}");

    // A gRPC-Web call, as the page makes it: the key service answers with its parameters.
    let token = server.token("standup", "alice", Duration::from_secs(60));
    let msg = pb::GetServiceInfoRequest {}.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&msg);
    let mut req = format!(
        "POST /veil.keys.v1.KeyService/GetServiceInfo HTTP/1.1\r\nhost: veil\r\n\
         content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n\
         authorization: Bearer {token}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        frame.len()
    )
    .into_bytes();
    req.extend_from_slice(&frame);
    let (head, body) = http(web, &req).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/grpc-web"),
        "{head}"
    );
    let body = if head.contains("transfer-encoding: chunked") {
        unchunk(&body)
    } else {
        body
    };
    // A data frame (flag 0) with the message, then a trailer frame (flag 0x80) saying OK.
    assert_eq!(body[0], 0, "{body:?}");
    let n = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let info = pb::ServiceInfo::decode(&body[5..5 + n]).unwrap();
    assert_eq!(info.external_sender_key.len(), 32);
    let trailers = &body[5 + n..];
    assert_eq!(trailers[0], 0x80);
    assert!(
        String::from_utf8_lossy(&trailers[5..]).contains("grpc-status:0"),
        "{:?}",
        String::from_utf8_lossy(trailers)
    );
}
