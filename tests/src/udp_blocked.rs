//! A participant on a network that drops UDP (specs/sfu.md "Networks that block UDP",
//! SFU-TCP-06): a network namespace of the test's own, joined to this one by a veth pair, with
//! an nftables rule inside that drops every UDP packet; and the two-process exchange of
//! numbered frames that the participant inside (`veil-e2e-participant`, run with
//! `ip netns exec`) and the one outside both run.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use veil_client::media::MediaKind;
use veil_client::room::Room;

use crate::{audio_frame, video_frame};

/// A network namespace with a veth pair to this one: `host` here, `inside` there, a /30 between
/// them. Deleted (with its veth pair) on drop, also when the test fails.
#[derive(Debug)]
pub struct Netns {
    /// The namespace's name (`ip netns exec <name> …`).
    pub name: String,
    /// This side's address.
    pub host: Ipv4Addr,
    /// The namespace's address.
    pub inside: Ipv4Addr,
    veth: String,
}

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: cannot run {cmd:?}: {e} (is iproute2/nftables installed?)")
    });
    assert!(
        out.status.success(),
        "{what}: {cmd:?} failed ({}): {}\nThis test needs root (CAP_NET_ADMIN) to create a network \
         namespace, and nftables (`apt-get install nftables`; .ci/run installs it).",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Netns {
    /// A new namespace, named uniquely for this process and call, whose /30 is one no
    /// interface here uses yet. With `drop_udp`, an nftables table inside drops every UDP
    /// packet in and out (and counts them: [`Netns::udp_dropped`]).
    ///
    /// # Panics
    /// If the namespace, the veth pair or the rule cannot be made (not root, no `ip` or `nft`):
    /// the message says what is missing. Nothing is skipped.
    #[must_use]
    pub fn create(drop_udp: bool) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("veil-tcp-{pid}-{n}");
        // Interface names have at most 15 bytes.
        let veth = format!("vt{}h{n}", pid % 10_000_000);
        let peer = format!("vt{}n{n}", pid % 10_000_000);
        run(
            "network namespace",
            Command::new("ip").args(["netns", "add", &name]),
        );
        let mut ns = Self {
            name,
            host: Ipv4Addr::UNSPECIFIED,
            inside: Ipv4Addr::UNSPECIFIED,
            veth,
        };
        let used = run(
            "addresses",
            Command::new("ip").args(["-4", "-o", "addr", "show"]),
        );
        let third = (0..250u32)
            .map(|k| (pid + n * 7 + k) % 250)
            .find(|k| !used.contains(&format!("10.231.{k}.")))
            .expect("a free 10.231.x.0/30");
        let third = u8::try_from(third).expect("below 250");
        ns.host = Ipv4Addr::new(10, 231, third, 1);
        ns.inside = Ipv4Addr::new(10, 231, third, 2);
        let ip = |args: &[&str]| run("veth pair", Command::new("ip").args(args));
        ip(&[
            "link", "add", &ns.veth, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/30", ns.host), "dev", &ns.veth]);
        ip(&["link", "set", &ns.veth, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/30", ns.inside),
            "dev",
            &peer,
        ]);
        ip(&["-n", &ns.name, "link", "set", &peer, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        // A network has a route out: without one, webrtc-rs's mDNS socket cannot join its
        // multicast group (ENODEV) and the peer connection is never built.
        let via = ns.host.to_string();
        ip(&["-n", &ns.name, "route", "add", "default", "via", &via]);
        if drop_udp {
            let rules = "table inet veil_drop_udp {\n\
                 chain out { type filter hook output priority 0; policy accept; meta l4proto udp counter drop; }\n\
                 chain in { type filter hook input priority 0; policy accept; meta l4proto udp counter drop; }\n\
                 }\n";
            let mut nft = std::process::Command::new("ip")
                .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run nft (apt-get install nftables): {e}"));
            {
                use std::io::Write as _;
                let mut stdin = nft.stdin.take().expect("piped");
                stdin.write_all(rules.as_bytes()).expect("nft's stdin");
            }
            let out = nft.wait_with_output().expect("nft ran");
            assert!(
                out.status.success(),
                "the nftables rule dropping UDP was refused ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        ns
    }

    /// UDP packets the namespace's rule dropped so far, both ways.
    ///
    /// # Panics
    /// If `nft` cannot list the rules.
    #[must_use]
    pub fn udp_dropped(&self) -> u64 {
        counters(&run(
            "nft list",
            Command::new("ip").args(["netns", "exec", &self.name, "nft", "list", "ruleset"]),
        ))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        // Deleting the namespace deletes the pair; this is for a pair whose peer never moved.
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// How participant `who`'s frame number `i` reads.
type Frame = fn(usize, u32) -> Vec<u8>;

/// The sum of the `counter packets N` of a ruleset listing.
fn counters(rules: &str) -> u64 {
    rules
        .lines()
        .filter_map(|l| {
            let rest = l.split("counter packets ").nth(1)?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// What one side checked of the other's frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Distinct audio frames, each byte-identical to what the other published.
    pub audio: usize,
    /// Distinct video frames, the same.
    pub video: usize,
}

/// Publish participant `me`'s numbered frames (audio every 20 ms at RTP timestamp `i × 960`,
/// video every 40 ms at `i × 3000`, a key frame every tenth) and check every frame of `other`
/// (participant number `other_index`, publishing the same way) against what it must be, byte
/// for byte. Once `want` audio and `want / 2` video frames of `other` are checked,
/// `on_checked` is called (once); it returns when `partner_done` is also true.
///
/// # Errors
/// A frame that differs, a frame that failed to decrypt, the room closing, or `limit` passing
/// first: the message says which, with the counts.
pub async fn exchange(
    room: &mut Room,
    me: usize,
    other: (&str, usize),
    want: usize,
    limit: Duration,
    mut on_checked: impl FnMut(Checked),
    partner_done: impl Fn() -> bool,
) -> Result<Checked, String> {
    let (other, other_index) = other;
    let started = tokio::time::Instant::now();
    // Frames go out once both are in the group: what is sent before has no key to open it.
    room.group()
        .wait(limit, |s| s.members.len() >= 2)
        .await
        .map_err(|e| format!("the group never had both participants: {e}"))?;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let (mut audio, mut video) = (BTreeSet::new(), BTreeSet::new());
    let mut i = 0u32;
    let mut told = false;
    loop {
        let checked = Checked {
            audio: audio.len(),
            video: video.len(),
        };
        tokio::select! {
            _ = tick.tick() => {
                room.publish_audio(&audio_frame(me, i), i * 960, (true, 30))
                    .await
                    .map_err(|e| format!("publish audio: {e}"))?;
                if i.is_multiple_of(2) {
                    let v = i / 2;
                    room.publish_video(&video_frame(me, v), v * 3000, v.is_multiple_of(10))
                        .await
                        .map_err(|e| format!("publish video: {e}"))?;
                }
                i += 1;
                if !told && checked.audio >= want && checked.video >= want / 2 {
                    told = true;
                    on_checked(checked);
                }
                if told && partner_done() {
                    break;
                }
                if started.elapsed() > limit {
                    return Err(format!(
                        "after {limit:?}: checked {checked:?} of {other}'s frames (want {want} \
                         audio, {} video), partner done: {}; stats {:?}",
                        want / 2,
                        partner_done(),
                        room.stats().received
                    ));
                }
            }
            f = room.next_frame() => {
                let f = f.ok_or("the room closed")?;
                if f.participant != other {
                    continue;
                }
                let (step, frame): (u32, Frame) = match f.kind {
                    MediaKind::Audio => (960, audio_frame),
                    MediaKind::Video => (3000, video_frame),
                };
                let n = f.timestamp / step;
                if f.timestamp % step != 0 || f.frame != frame(other_index, n) {
                    return Err(format!(
                        "{other}'s {:?} frame at {} is not what was published",
                        f.kind, f.timestamp
                    ));
                }
                match f.kind {
                    MediaKind::Audio => audio.insert(n),
                    MediaKind::Video => video.insert(n),
                };
            }
        }
    }
    for (track, t) in &room.stats().received {
        if !t.decrypt_failures.is_empty() {
            return Err(format!(
                "{track}: decryption failures {:?}",
                t.decrypt_failures
            ));
        }
    }
    Ok(Checked {
        audio: audio.len(),
        video: video.len(),
    })
}
