//! A TCP forwarder for `tests/e2e/udp_blocked.rs` (SFU-TCP-07): run inside a network namespace
//! (`ip netns exec … veil-e2e-forward LISTEN TARGET`), it accepts on `LISTEN` (the namespace's
//! veth address) and connects each stream to `TARGET` (Chromium's DevTools endpoint on the
//! namespace's loopback), copying both ways. It prints `listening` once bound, and runs until
//! killed.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed: Option<(SocketAddr, SocketAddr)> = match args.as_slice() {
        [l, t] => l.parse().ok().zip(t.parse().ok()),
        _ => None,
    };
    let Some((listen, target)) = parsed else {
        eprintln!("usage: veil-e2e-forward LISTEN_ADDR TARGET_ADDR");
        return ExitCode::from(2);
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("veil-e2e-forward: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening");
    let _ = std::io::stdout().flush();
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
