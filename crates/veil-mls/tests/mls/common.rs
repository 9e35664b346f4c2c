//! An in-memory delivery service for the tests: it orders commits (the first for an epoch wins,
//! later ones are refused), fans them out to members, and delivers Welcomes. No network.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use veil_mls::{CallSession, CommitOut, KeyConfig, Processed, Provider, Received};

pub const NOW: Duration = Duration::ZERO;

/// A room: its members' sessions in join order, and the service's epoch.
pub struct Room {
    pub members: Vec<CallSession>,
    pub epoch: u64,
}

impl Room {
    /// A room created by `creator`.
    pub fn new(creator: &str) -> Self {
        Self::with_id(creator, b"room")
    }

    /// A room with group id `id` created by `creator`.
    pub fn with_id(creator: &str, id: &[u8]) -> Self {
        let mut s = CallSession::new(creator.as_bytes(), KeyConfig::default()).unwrap();
        s.create_group(id, NOW).unwrap();
        Self {
            members: vec![s],
            epoch: 0,
        }
    }

    /// Index of the member with `name`.
    pub fn pos(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.identity() == name.as_bytes())
            .unwrap()
    }

    /// The service accepts `out` from member `from` (first commit of the epoch): the committer
    /// confirms, every other member processes it in order.
    pub fn accept(&mut self, from: usize, out: &CommitOut, now: Duration) {
        self.members[from].confirm_commit(now).unwrap();
        for (i, m) in self.members.iter_mut().enumerate() {
            if i != from {
                match m.process(&out.commit, now).unwrap() {
                    Processed::EpochChanged { .. } | Processed::Removed => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        self.epoch += 1;
    }

    /// Member `by` adds new members `names`; they join by Welcome.
    pub fn add(&mut self, by: usize, names: &[&str]) {
        let mut joiners: Vec<CallSession> = names
            .iter()
            .map(|n| CallSession::new(n.as_bytes(), KeyConfig::default()).unwrap())
            .collect();
        let kps: Vec<Vec<u8>> = joiners
            .iter()
            .map(|j| j.key_package(false).unwrap())
            .collect();
        let out = self.members[by].add_members(&kps).unwrap();
        self.accept(by, &out, NOW);
        for j in &mut joiners {
            j.join_welcome(out.welcome.as_deref().unwrap(), NOW)
                .unwrap();
        }
        self.members.extend(joiners);
    }

    /// Member `by` removes `name`; returns the removed session.
    pub fn remove(&mut self, by: usize, name: &str) -> CallSession {
        let out = self.members[by].remove_members(&[name.as_bytes()]).unwrap();
        self.accept(by, &out, NOW);
        let p = self.pos(name);
        self.members.remove(p)
    }

    /// Every member sends one frame; every other member must decrypt it byte for byte.
    /// Returns the number of decryptions.
    pub fn all_to_all(&mut self, tag: &str) -> usize {
        let mut n = 0;
        for from in 0..self.members.len() {
            let pt = format!("{tag} from {from}").into_bytes();
            let frame = encrypt(&mut self.members[from], &pt);
            for to in (0..self.members.len()).filter(|&t| t != from) {
                assert_eq!(
                    decrypt(&mut self.members[to], &frame),
                    Some(pt.clone()),
                    "{tag}: {from} → {to}"
                );
                n += 1;
            }
        }
        n
    }
}

/// A frame from `outsider` decrypts at every room member, and every member's frame at
/// `outsider` (a member of another session type, e.g. SQLite-backed). Returns decryptions.
pub fn cross_check<P: Provider>(
    room: &mut Room,
    outsider: &mut CallSession<P>,
    tag: &str,
) -> usize {
    let mut n = 0;
    let pt = format!("{tag} from outsider").into_bytes();
    let f = encrypt(outsider, &pt);
    for m in &mut room.members {
        assert_eq!(decrypt(m, &f), Some(pt.clone()), "{tag}: outsider → member");
        n += 1;
    }
    for m in &mut room.members {
        let pt = format!("{tag} to outsider").into_bytes();
        let f = encrypt(m, &pt);
        assert_eq!(decrypt(outsider, &f), Some(pt), "{tag}: member → outsider");
        n += 1;
    }
    n
}

pub fn encrypt<P: Provider>(s: &mut CallSession<P>, pt: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; pt.len() + 40];
    let n = s.encrypt_frame(b"", pt, &mut out).unwrap();
    out.truncate(n);
    out
}

/// `Some(plaintext)` if the frame decrypted now; `None` if it was held or refused.
pub fn decrypt<P: Provider>(s: &mut CallSession<P>, frame: &[u8]) -> Option<Vec<u8>> {
    decrypt_at(s, frame, NOW)
}

pub fn decrypt_at<P: Provider>(
    s: &mut CallSession<P>,
    frame: &[u8],
    now: Duration,
) -> Option<Vec<u8>> {
    let mut buf = frame.to_vec();
    match s.decrypt_frame(b"", &mut buf, now) {
        Ok(Received::Plaintext { plaintext, .. }) => Some(plaintext.to_vec()),
        Ok(Received::Held) | Err(_) => None,
    }
}
