//! Writes the hand-made seed inputs of `kds_request`, `sfu_signal` and `sfu_sdp` into
//! `corpus/<target>/seed-<name>` (the input formats are in each target's module doc). Run it
//! again after changing a format: `cargo run --manifest-path fuzz/Cargo.toml --bin seeds`.

use std::path::Path;

use prost::Message;
use veil_fuzz::sfu_sdp::OFFER;
use veil_proto::keys::v1 as kp;
use veil_proto::sfu::v1 as sp;

/// One request record: `[op][len: u16 LE][bytes]`.
fn rec(out: &mut Vec<u8>, op: u8, bytes: &[u8]) {
    out.push(op);
    out.extend_from_slice(&u16::try_from(bytes.len()).expect("short").to_le_bytes());
    out.extend_from_slice(bytes);
}

fn kds() -> Vec<(&'static str, Vec<u8>)> {
    let room = || "fuzz".to_owned();
    // Callers: 0x00 Alice, 0x10 Bob, 0x20 Carol, 0x30 a token from the input.
    let (alice, bob, carol) = (0x00, 0x10, 0x20);
    let mut seeds = Vec::new();
    let mut s = vec![3];
    rec(&mut s, alice | 14, &[]); // claim Bob's KeyPackage
    rec(&mut s, alice | 11, &[]); // commit adding Bob
    rec(&mut s, bob | 15, &[]); // Bob subscribes from epoch 0
    rec(
        &mut s,
        bob | 6,
        &kp::LeaveRequest { room: room() }.encode_to_vec(),
    );
    rec(
        &mut s,
        alice | 4,
        &kp::GetGroupInfoRequest { room: room() }.encode_to_vec(),
    );
    seeds.push(("add-bob", s));
    let mut s = vec![1];
    rec(&mut s, carol | 13, &[]); // Carol's external commit
    rec(&mut s, alice | 12, &[]); // Alice's update, now stale
    rec(
        &mut s,
        carol | 8,
        &kp::SubscribeRequest {
            room: room(),
            from_epoch: Some(0),
        }
        .encode_to_vec(),
    );
    seeds.push(("carol-joins", s));
    let mut s = vec![0];
    rec(&mut s, alice | 9, &[]); // CreateRoom with the fixture's GroupInfo
    rec(&mut s, bob | 10, &[]); // Bob's KeyPackages
    rec(&mut s, alice | 12, &[]); // Alice's update
    rec(
        &mut s,
        alice | 7,
        &kp::DeleteRoomRequest { room: room() }.encode_to_vec(),
    );
    seeds.push(("create-update-delete", s));
    let mut s = vec![1];
    rec(&mut s, alice | 11, &[5, 0, 0xFF, 0x40, 0, 1]); // a commit with two flipped bytes
    rec(&mut s, alice | 9, &[0x10, 0, 0x80]); // a GroupInfo with one
    rec(&mut s, bob | 10, &[0x30, 0, 0x01]); // a KeyPackage with one
    seeds.push(("flipped", s));
    // Every request type from raw bytes, each with the room set by flag 0x40.
    let mut s = vec![3];
    rec(&mut s, alice, &kp::GetServiceInfoRequest {}.encode_to_vec());
    let kps = kp::PublishKeyPackagesRequest {
        room: String::new(),
        key_packages: vec![vec![0, 1, 0, 5, 1, 2, 3]],
    };
    rec(&mut s, 0x40 | bob | 1, &kps.encode_to_vec());
    let claim = kp::ClaimKeyPackageRequest {
        room: String::new(),
        identity: "bob".into(),
    };
    rec(&mut s, 0x40 | alice | 2, &claim.encode_to_vec());
    let create = kp::CreateRoomRequest {
        room: "fuzz".into(),
        group_info: vec![0, 1, 0, 4],
    };
    rec(&mut s, alice | 3, &create.encode_to_vec());
    rec(
        &mut s,
        0x40 | carol | 4,
        &kp::GetGroupInfoRequest { room: "x".into() }.encode_to_vec(),
    );
    let commit = kp::SendCommitRequest {
        room: room(),
        commit: vec![0, 1, 0, 1],
        welcome: vec![],
        group_info: vec![],
    };
    rec(&mut s, alice | 5, &commit.encode_to_vec());
    rec(
        &mut s,
        0x40 | carol | 6,
        &kp::LeaveRequest {
            room: String::new(),
        }
        .encode_to_vec(),
    );
    rec(
        &mut s,
        0x40 | bob | 7,
        &kp::DeleteRoomRequest {
            room: String::new(),
        }
        .encode_to_vec(),
    );
    rec(
        &mut s,
        0x40 | alice | 8,
        &kp::SubscribeRequest {
            room: String::new(),
            from_epoch: Some(7),
        }
        .encode_to_vec(),
    );
    seeds.push(("every-rpc", s));
    // A token from the input.
    let mut s = vec![1];
    let token = b"eyJhbGciOiJIUzI1NiJ9.e30.sig";
    let mut body = vec![u8::try_from(token.len()).expect("short")];
    body.extend_from_slice(token);
    body.extend_from_slice(&kp::GetGroupInfoRequest { room: room() }.encode_to_vec());
    rec(&mut s, 0x30 | 4, &body);
    seeds.push(("raw-token", s));
    seeds
}

fn sfu() -> Vec<(&'static str, Vec<u8>)> {
    use sp::signal_request::Request as R;
    let req = |id, r| {
        sp::SignalRequest {
            id,
            request: Some(r),
        }
        .encode_to_vec()
    };
    let join = || {
        R::Join(sp::Join {
            room: String::new(),
            offer_sdp: String::new(),
            packetization: 0,
        })
    };
    let track = || "t1".to_owned();
    let mut seeds = Vec::new();
    let mut s = Vec::new();
    // Flags: 1 sets the room, 2 puts the fixture offer in.
    rec(&mut s, 3, &req(1, join()));
    let cand = sp::IceCandidate {
        candidate: "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_mline_index: Some(0),
    };
    rec(&mut s, 0, &req(2, R::Candidate(cand)));
    rec(
        &mut s,
        0,
        &req(3, R::Subscribe(sp::Subscribe { track: track() })),
    );
    rec(
        &mut s,
        0,
        &req(
            4,
            R::SetLayer(sp::SetLayer {
                track: track(),
                rid: "h".into(),
            }),
        ),
    );
    let svc = sp::SetSvcLayer {
        track: track(),
        max_spatial: Some(1),
        max_temporal: None,
    };
    rec(&mut s, 0, &req(5, R::SetSvcLayer(svc)));
    rec(
        &mut s,
        0,
        &req(6, R::Unsubscribe(sp::Unsubscribe { track: track() })),
    );
    rec(
        &mut s,
        2,
        &req(7, R::Offer(sp::SessionDescription { sdp: String::new() })),
    );
    rec(
        &mut s,
        2,
        &req(8, R::Answer(sp::SessionDescription { sdp: String::new() })),
    );
    rec(
        &mut s,
        0,
        &req(
            9,
            R::Join(sp::Join {
                room: "again".into(),
                offer_sdp: String::new(),
                packetization: 1,
            }),
        ),
    );
    rec(&mut s, 0, &req(10, R::Leave(sp::Leave {})));
    seeds.push(("session", s));
    let mut s = Vec::new();
    rec(
        &mut s,
        0,
        &req(
            1,
            R::Join(sp::Join {
                room: "fuzz".into(),
                offer_sdp: OFFER.replace("a=rid:f send\r\n", ""),
                packetization: 2,
            }),
        ),
    );
    rec(
        &mut s,
        0,
        &req(
            2,
            R::Offer(sp::SessionDescription {
                sdp: OFFER.replace("sendonly", "sendrecv"),
            }),
        ),
    );
    seeds.push(("own-sdp", s));
    let mut s = Vec::new();
    rec(
        &mut s,
        1,
        &req(1, R::Subscribe(sp::Subscribe { track: track() })),
    );
    seeds.push(("not-join-first", s));
    seeds
}

fn sdp() -> Vec<(&'static str, Vec<u8>)> {
    let audio_only = OFFER
        .split("m=video")
        .next()
        .expect("audio")
        .replace("BUNDLE 0 1", "BUNDLE 0");
    vec![
        ("offer", OFFER.as_bytes().to_vec()),
        (
            "renegotiate",
            format!("{OFFER}\0{}", OFFER.replace("sendonly", "sendrecv")).into_bytes(),
        ),
        (
            "answer-without-offer",
            format!("{OFFER}\0{audio_only}\0{audio_only}").into_bytes(),
        ),
        ("audio-only", audio_only.into_bytes()),
    ]
}

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in [
        ("kds_request", kds()),
        ("sfu_signal", sfu()),
        ("sfu_sdp", sdp()),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
    }
    Ok(())
}
