//! Commit races and epoch switches under load (MLS-SES-04, MLS-KEY-04, MLS-KEY-05).

use crate::common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use common::{NOW, Room, encrypt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use veil_mls::{CallSession, KeyConfig, MlsError, Processed, Received};

/// Five members commit on the same epoch; the service takes the first. The losers get
/// `WrongEpoch` if they try to process their own stale commit, recover by processing the winner,
/// and re-propose; everyone converges.
#[test]
fn concurrent_commits_one_wins_losers_recover() {
    let mut room = Room::new("m0");
    room.add(0, &["m1", "m2", "m3", "m4"]);
    let e = room.epoch;
    let outs: Vec<_> = (0..5)
        .map(|i| room.members[i].self_update().unwrap())
        .collect();
    // m2's commit arrives first at the service.
    let winner = 2;
    room.members[winner].confirm_commit(NOW).unwrap();
    for i in (0..5).filter(|&i| i != winner) {
        // A stale commit of another loser is refused with a typed error ...
        let stale = &outs[(i + 1) % 5];
        if (i + 1) % 5 != winner {
            assert!(matches!(
                room.members[winner].process(&stale.commit, NOW),
                Err(MlsError::WrongEpoch { message_epoch, group_epoch }) if message_epoch == e && group_epoch == e + 1
            ));
        }
        // ... and the loser drops its own pending commit by processing the winner.
        let p = room.members[i].process(&outs[winner].commit, NOW).unwrap();
        assert_eq!(
            p,
            Processed::EpochChanged {
                epoch: e + 1,
                released: vec![]
            }
        );
    }
    room.epoch += 1;
    // Each loser re-proposes in turn; all are accepted.
    for i in (0..5).filter(|&i| i != winner) {
        let out = room.members[i].self_update().unwrap();
        room.accept(i, &out, NOW);
    }
    let auth = room.members[0].epoch_authenticator();
    assert!(
        room.members
            .iter()
            .all(|m| m.epoch() == Some(e + 5) && m.epoch_authenticator() == auth)
    );
    assert_eq!(room.all_to_all("converged"), 20);
}

#[test]
fn a_second_commit_while_one_is_pending_is_refused() {
    let mut room = Room::new("a");
    room.add(0, &["b"]);
    room.members[0].self_update().unwrap();
    assert!(matches!(
        room.members[0].self_update(),
        Err(MlsError::CommitPending)
    ));
    room.members[0].discard_commit().unwrap();
    room.members[0].self_update().unwrap();
}

/// One member's two inbound paths: commits from the key service, media from the SFU. Media can
/// overtake the commit that keys it.
#[derive(Default)]
struct Inbox {
    commits: VecDeque<Vec<u8>>,
    /// Frame bytes, plaintext, and the epoch the sender encrypted it in.
    media: VecDeque<(Vec<u8>, Vec<u8>, u64)>,
    /// Plaintexts of frames that were held and must still be released.
    awaiting: HashSet<Vec<u8>>,
}

/// The outcome of one member reading its inbox.
#[derive(Default)]
struct Tally {
    delivered: usize,
    held: usize,
    pre_join: usize,
}

/// Process every queued commit, checking released frames against those awaited.
fn read_commits(name: &str, s: &mut CallSession, q: &mut Inbox, now: Duration, t: &mut Tally) {
    while let Some(c) = q.commits.pop_front() {
        if let Processed::EpochChanged { released, .. } = s.process(&c, now).unwrap() {
            for r in released {
                assert!(
                    q.awaiting.remove(&r.plaintext),
                    "{name}: released a frame it was not waiting for"
                );
                t.delivered += 1;
            }
        }
    }
}

/// Decrypt `n` queued frames.
fn read_media(
    name: &str,
    s: &mut CallSession,
    q: &mut Inbox,
    n: usize,
    joined: u64,
    now: Duration,
    t: &mut Tally,
) {
    for _ in 0..n.min(q.media.len()) {
        let (f, pt, epoch) = q.media.pop_front().unwrap();
        let mut buf = f;
        let before_join = epoch < joined;
        match s.decrypt_frame(b"", &mut buf, now) {
            Ok(_) if before_join => panic!("{name} decrypted a frame from before its join"),
            Err(_) if before_join => t.pre_join += 1,
            Ok(Received::Plaintext { plaintext, .. }) => {
                assert_eq!(plaintext, &pt[..]);
                t.delivered += 1;
            }
            Ok(Received::Held) => {
                q.awaiting.insert(pt);
                t.held += 1;
            }
            Err(e) => panic!(
                "{name} could not decrypt {}: {e}",
                String::from_utf8_lossy(&pt)
            ),
        }
    }
}

/// Five core senders stream frames every tick while other members join and leave every few
/// ticks. Commits and media travel separately, each with its own random lag, so frames of a new
/// epoch often arrive before their commit (held, then released) and frames of the old epoch after
/// it (retained keys). Members decrypt every frame sent in an epoch they belong to; frames a
/// lagging sender encrypted in an epoch from before the receiver joined are refused (post-join
/// secrecy); the held queue stays within its bound.
#[test]
fn epoch_switches_under_load_lose_no_frame() {
    let cfg = KeyConfig {
        max_held_frames: 64,
        ..KeyConfig::default()
    };
    let mut rng = StdRng::seed_from_u64(7);
    let mut members: Vec<(String, CallSession)> = Vec::new();
    let mut creator = CallSession::new(b"core0", cfg).unwrap();
    creator.create_group(b"room", NOW).unwrap();
    members.push(("core0".into(), creator));
    let mut inbox: HashMap<String, Inbox> =
        HashMap::from([("core0".to_string(), Inbox::default())]);
    let mut joined: HashMap<String, u64> = HashMap::from([("core0".to_string(), 0)]);
    let mut tally = Tally::default();
    let (mut changes, mut next_guest) = (0usize, 0);

    // A membership change by member `by`, accepted by the service at once.
    let commit = |members: &mut Vec<(String, CallSession)>,
                  inbox: &mut HashMap<String, Inbox>,
                  joined: &mut HashMap<String, u64>,
                  tally: &mut Tally,
                  by: usize,
                  add: Option<String>,
                  remove: Option<String>,
                  now: Duration| {
        // The committer must be on the current epoch: it processes its queued commits first.
        let name = members[by].0.clone();
        read_commits(
            &name,
            &mut members[by].1,
            inbox.get_mut(&name).unwrap(),
            now,
            tally,
        );
        let mut joiner = add
            .as_ref()
            .map(|n| CallSession::new(n.as_bytes(), cfg).unwrap());
        let out = match (&mut joiner, &remove) {
            (Some(j), _) => members[by]
                .1
                .add_members(&[j.key_package(false).unwrap()])
                .unwrap(),
            (None, Some(r)) => members[by].1.remove_members(&[r.as_bytes()]).unwrap(),
            _ => unreachable!(),
        };
        members[by].1.confirm_commit(now).unwrap();
        for (n, _) in members.iter().filter(|(n, _)| *n != name) {
            inbox
                .get_mut(n)
                .unwrap()
                .commits
                .push_back(out.commit.clone());
        }
        if let Some(r) = remove {
            members.retain(|(n, _)| *n != r);
            inbox.remove(&r);
        }
        if let (Some(mut j), Some(n)) = (joiner, add) {
            j.join_welcome(out.welcome.as_deref().unwrap(), now)
                .unwrap();
            joined.insert(n.clone(), j.epoch().unwrap());
            inbox.insert(n.clone(), Inbox::default());
            members.push((n, j));
        }
    };

    for i in 1..5 {
        commit(
            &mut members,
            &mut inbox,
            &mut joined,
            &mut tally,
            0,
            Some(format!("core{i}")),
            None,
            NOW,
        );
    }
    for tick in 0..300u64 {
        let now = Duration::from_millis(20 * tick);
        if tick % 15 == 7 {
            let by = rng.random_range(0..5);
            let guests: Vec<String> = members
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| n.starts_with("guest"))
                .collect();
            let (add, remove) = if guests.is_empty() || guests.len() < 3 && rng.random_bool(0.6) {
                next_guest += 1;
                (Some(format!("guest{next_guest}")), None)
            } else {
                (
                    None,
                    Some(guests[rng.random_range(0..guests.len())].clone()),
                )
            };
            commit(
                &mut members,
                &mut inbox,
                &mut joined,
                &mut tally,
                by,
                add,
                remove,
                now,
            );
            changes += 1;
        }
        // Everyone sends a frame to everyone else.
        for i in 0..members.len() {
            let pt = format!("{} t{tick}", members[i].0).into_bytes();
            let frame = encrypt(&mut members[i].1, &pt);
            let epoch = members[i].1.epoch().unwrap();
            for (n, _) in members.iter().filter(|(n, _)| *n != members[i].0) {
                inbox
                    .get_mut(n)
                    .unwrap()
                    .media
                    .push_back((frame.clone(), pt.clone(), epoch));
            }
        }
        // Each member reads some media, and with some probability its commits, in random order.
        for (name, s) in members.iter_mut() {
            let q = inbox.get_mut(name).unwrap();
            let n = rng.random_range(0..=q.media.len());
            let commits_now = rng.random_bool(0.4);
            if commits_now && rng.random_bool(0.5) {
                read_commits(name, s, q, now, &mut tally);
            }
            read_media(name, s, q, n, joined[name.as_str()], now, &mut tally);
            if commits_now {
                read_commits(name, s, q, now, &mut tally);
            }
            assert!(s.keys().held_frames() <= cfg.max_held_frames);
        }
    }
    // Drain: everyone reads everything left.
    let end = Duration::from_millis(20 * 300);
    for (name, s) in members.iter_mut() {
        let q = inbox.get_mut(name).unwrap();
        read_commits(name, s, q, end, &mut tally);
        let n = q.media.len();
        read_media(name, s, q, n, joined[name.as_str()], end, &mut tally);
        assert!(
            q.awaiting.is_empty(),
            "{name}: {} held frames never released",
            q.awaiting.len()
        );
        assert_eq!(
            s.keys().stats().held_dropped,
            0,
            "{name} dropped held frames"
        );
        assert!(s.keys().stats().max_held <= cfg.max_held_frames);
    }
    let epoch = members[0].1.epoch().unwrap();
    assert!(
        changes >= 19 && epoch >= 23,
        "{changes} membership changes, epoch {epoch}"
    );
    assert!(
        tally.held > 50,
        "media should overtake commits ({} held)",
        tally.held
    );
    assert!(tally.delivered > 10_000, "{}", tally.delivered);
    assert!(
        tally.pre_join > 0,
        "the scenario should exercise post-join secrecy"
    );
    let max_held = members
        .iter()
        .map(|(_, s)| s.keys().stats().max_held)
        .max()
        .unwrap();
    println!(
        "{changes} membership changes to epoch {epoch}: {} frames decrypted, {} of them held first, \
         {} pre-join frames refused, at most {max_held} frames held at once",
        tally.delivered, tally.held, tally.pre_join
    );
}
