//! The room's side: the event stream (subscription, losses, resubscription), room events in
//! epoch order, the service's proposals, and the status the shell shows (specs/member.md §4).

use std::time::Duration;

use veil_mls::{MlsError, Processed, Provider};

use super::{Event, Kind, Member, Phase, Request, RequestId, Step, Stream, new_op};
use crate::error::CallError;
use crate::io::{Code, Failure, Reply, ServiceEvent};
use crate::link::LinkEvent;

impl<P: Provider> Member<P> {
    pub(super) fn request(&mut self, req: Request) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.requests.push_back((id, req));
        id
    }

    pub(super) fn stream_wanted(&self) -> bool {
        self.phase == Phase::Running && (self.joined || self.awaiting_welcome)
    }

    /// A commit of this member awaits the service's verdict: the room's events wait too, so
    /// the member's own commit, echoed back, is not processed before it is confirmed
    /// (MEM-CMT-02).
    pub(super) fn committing(&self) -> bool {
        self.op.as_ref().is_some_and(|o| {
            !o.kind.joins()
                && matches!(
                    o.step,
                    Step::Wait(_, Request::SendCommit { .. })
                        | Step::Retry(_, Request::SendCommit { .. })
                )
        })
    }

    pub(super) fn drain_deferred(&mut self, now: Duration) {
        while !self.committing() && self.phase == Phase::Running {
            let Some(ev) = self.deferred.pop_front() else {
                break;
            };
            self.on_event(ev, now);
        }
    }

    pub(super) fn publish_status(&mut self) {
        // Members and the authenticator change only with the group, hence with the session's
        // epoch: unless this key moved, the status is what was published (no member list to
        // rebuild on every input of a 1000-member room).
        let key = (
            self.s.epoch(),
            self.joined,
            self.resyncs,
            self.acknowledged.len(),
            self.link.clone(),
        );
        if self.status_key.as_ref() == Some(&key) {
            return;
        }
        self.status_key = Some(key);
        let s = self.status();
        if s != self.last_status {
            self.last_status = s.clone();
            self.events.push_back(Event::Status(s));
        }
    }

    pub(super) fn after_epoch_change(&mut self) {
        self.removals.clear();
        self.commit_at = None;
        self.publish_status();
    }

    pub(super) fn is_member(&self, identity: &str) -> bool {
        self.s
            .members()
            .iter()
            .any(|(_, id)| id == identity.as_bytes())
    }

    pub(super) fn on_subscribed(
        &mut self,
        id: RequestId,
        from: Option<u64>,
        reply: Reply,
        now: Duration,
    ) {
        match reply {
            Reply::Subscribed => {
                self.stream = Stream::Up(id);
                self.link_restored(now);
            }
            // Only members replay (KDS-FAN-04): a member refused its replay was removed while
            // away (MEM-SYNC-04).
            Reply::Failed(Failure::Refused {
                code: Code::PermissionDenied,
                ..
            }) if from.is_some() => self.stop(Some(CallError::Removed)),
            Reply::Failed(Failure::Unavailable(m)) => {
                self.link_lost(m.clone(), now);
                self.link.failed(m);
                self.publish_status();
            }
            Reply::Failed(f) => self.stop(Some(CallError::Service(f))),
            other => self.stop(Some(CallError::Mls(MlsError::Internal(format!(
                "unexpected reply {other:?} to a subscription"
            ))))),
        }
    }

    /// The stream is lost (or another attempt failed): report a new loss once, and set the
    /// next attempt (MEM-SYNC-02).
    pub(super) fn link_lost(&mut self, reason: String, now: Duration) {
        if self.link.is_up() {
            tracing::warn!(reason, "lost the key service's room stream; resubscribing");
            self.link.lose(reason.clone());
            self.lost_at = Some(now);
            self.backoff.reset();
            self.events
                .push_back(Event::Link(LinkEvent::Lost { reason }));
        }
        let wait = self.backoff.next_delay(self.jitter.unit());
        self.stream = Stream::Down(now + wait);
        self.publish_status();
    }

    pub(super) fn link_restored(&mut self, now: Duration) {
        self.backoff.reset();
        if self.link.is_up() {
            return;
        }
        let attempts = self.link.attempts + 1;
        let down_for = self.lost_at.take().map_or(Duration::ZERO, |t| now - t);
        tracing::info!(attempts, ?down_for, "the key service's room stream is back");
        self.link.restore();
        self.events
            .push_back(Event::Link(LinkEvent::Restored { attempts, down_for }));
        self.publish_status();
    }

    pub(super) fn on_event(&mut self, ev: ServiceEvent, now: Duration) {
        match ev {
            ServiceEvent::Commit { epoch, message } if self.joined => {
                let mine = self.s.epoch().unwrap_or(0);
                if epoch < mine {
                    return; // merged already (our own, or a replay): MEM-SYNC-01
                }
                if epoch > mine {
                    // A gap: resubscribe from our epoch (MEM-SYNC-01).
                    self.stream = Stream::Down(now);
                    return;
                }
                match self.s.process(&message, now) {
                    Ok(Processed::Removed) => self.stop(Some(CallError::Removed)),
                    Ok(Processed::EpochChanged { .. } | Processed::OwnCommitMerged { .. }) => {
                        self.after_epoch_change();
                    }
                    Ok(Processed::ProposalStored) => {}
                    Err(MlsError::Rejected(why)) => {
                        // The service accepted a commit we cannot process (it cannot check
                        // confirmation and membership tags): rejoin by external commit
                        // (MEM-SYNC-03).
                        tracing::warn!(why, "cannot process an accepted commit; rejoining");
                        self.resyncs += 1;
                        self.s.leave_locally();
                        self.joined = false;
                        self.stream = Stream::Down(now);
                        self.events.push_back(Event::Resync { reason: why });
                        if self.rejoin.is_none() {
                            let op = new_op(None, Kind::Rejoin, now + self.cfg.retry_for);
                            self.rejoin = self.step(op, now);
                        }
                        self.publish_status();
                    }
                    Err(e) => self.stop(Some(e.into())),
                }
            }
            ServiceEvent::Proposal {
                epoch,
                message,
                removes,
            } if self.joined => {
                if Some(epoch) != self.s.epoch() {
                    return;
                }
                if let Err(e) = self.s.process(&message, now) {
                    self.stop(Some(e.into()));
                    return;
                }
                self.proposals_seen += 1;
                self.removals.insert(removes);
                self.schedule_proposal_commit(now);
            }
            ServiceEvent::Synced { epoch } if self.joined && self.s.epoch() == Some(epoch) => {
                // MEM-RST-01: the replay is over and the room is at our epoch, so a pending
                // commit an earlier process left in the stored state never reached the room
                // (no commit of ours is in flight while events are processed): drop it, and a
                // restored member that still cannot send commits its self-update now.
                if let Err(e) = self.s.discard_commit() {
                    self.stop(Some(e.into()));
                    return;
                }
                if self.frames.sender_kid().is_none()
                    && !self.queue.iter().any(|(_, k)| *k == Kind::SelfUpdate)
                {
                    self.queue.push_back((None, Kind::SelfUpdate));
                }
            }
            ServiceEvent::Welcome { message } if !self.joined && self.rejoin.is_none() => {
                match self.s.join_welcome(&message, now) {
                    Ok(_) => {
                        self.joined = true;
                        self.awaiting_welcome = false;
                        self.after_epoch_change();
                    }
                    Err(e) => self.stop(Some(e.into())),
                }
            }
            _ => {}
        }
    }

    /// The lowest-ranked member not being removed commits at once, the next after one delay,
    /// and so on (MEM-PROP-01).
    pub(super) fn schedule_proposal_commit(&mut self, now: Duration) {
        let me = self.cfg.identity.as_bytes();
        let mut candidates: Vec<(u32, Vec<u8>)> = self
            .s
            .members()
            .into_iter()
            .filter(|(_, id)| !self.removals.contains(&*String::from_utf8_lossy(id)))
            .collect();
        candidates.sort();
        let Some(rank) = candidates.iter().position(|(_, id)| id == me) else {
            return; // we are the one leaving
        };
        let delay = self.cfg.proposal_commit_delay * u32::try_from(rank).unwrap_or(u32::MAX);
        self.commit_at = Some(now + delay);
    }
}
