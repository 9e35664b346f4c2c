//! The relay on loopback (NETEM-RELAY-01): an echo target behind it, clients in front.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use veil_netem::{Impairment, Loss, Relay, RelayConfig};

/// A UDP echo server; its address.
async fn echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

async fn relay(impairment: Impairment) -> Relay {
    let bound = Relay::bind(&["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    bound
        .start(RelayConfig {
            targets: vec![echo().await],
            impairment,
            windows: Vec::new(),
            seed: 1,
        })
        .unwrap()
}

/// Send `n` numbered datagrams 1 ms apart to `to`; the numbers echoed back within `wait` of
/// the last.
async fn round_trips(client: &UdpSocket, to: SocketAddr, n: u32, wait: Duration) -> Vec<u32> {
    for i in 0..n {
        client.send_to(&i.to_be_bytes(), to).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok(Ok(k)) = tokio::time::timeout(wait, client.recv(&mut buf)).await {
        got.push(u32::from_be_bytes(buf[..k].try_into().unwrap()));
    }
    got
}

/// Both directions of each client's own flow are relayed through their own upstream socket:
/// a clean relay echoes everything, in order, to the client that sent it, and counts it.
#[tokio::test]
async fn each_client_gets_its_own_flow_both_ways() {
    let relay = relay(Impairment::default()).await;
    let to = relay.listen_addrs()[0];
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let got_a = round_trips(&a, to, 200, Duration::from_millis(500)).await;
    let got_b = round_trips(&b, to, 100, Duration::from_millis(500)).await;
    assert_eq!(got_a, (0..200).collect::<Vec<_>>());
    assert_eq!(got_b, (0..100).collect::<Vec<_>>());
    let flows = relay.flows();
    assert_eq!(flows.len(), 2);
    assert_eq!(flows[0].client, a.local_addr().unwrap());
    assert_eq!(flows[1].client, b.local_addr().unwrap());
    assert_ne!(flows[0].upstream.port(), flows[1].upstream.port());
    assert_eq!((flows[0].up.forwarded, flows[0].down.forwarded), (200, 200));
    assert_eq!((flows[1].up.forwarded, flows[1].down.forwarded), (100, 100));
}

/// The impairment changes while the relay runs: a blackout for one flow drops its datagrams
/// (counted) while the other flows on; lifted, it passes again; loss for all is counted in
/// both directions.
#[tokio::test]
async fn impairment_changes_at_run_time_per_flow_or_for_all() {
    let relay = relay(Impairment::default()).await;
    let to = relay.listen_addrs()[0];
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Open both flows.
    assert_eq!(
        round_trips(&a, to, 1, Duration::from_millis(300)).await,
        [0]
    );
    assert_eq!(
        round_trips(&b, to, 1, Duration::from_millis(300)).await,
        [0]
    );

    relay.set_flow(
        a.local_addr().unwrap(),
        Impairment::default().with_blackout(true),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        round_trips(&a, to, 50, Duration::from_millis(300))
            .await
            .is_empty()
    );
    assert_eq!(
        round_trips(&b, to, 50, Duration::from_millis(300))
            .await
            .len(),
        50
    );
    assert_eq!(relay.flows()[0].up.blacked_out, 50);

    relay.set_all(Impairment::default().with_loss(Loss::Random(0.3)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = round_trips(&a, to, 400, Duration::from_millis(500)).await;
    let f = relay.flows()[0];
    // 30 % each way: about half the round trips survive.
    assert!((120..=280).contains(&got.len()), "{} {f:?}", got.len());
    assert_eq!(got.len() as u64, f.down.forwarded - 1);
    assert!(f.up.lost > 60 && f.down.lost > 30, "{f:?}");
}
