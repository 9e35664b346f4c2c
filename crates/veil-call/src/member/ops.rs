//! The command slot: running a command (and the member's own internal steps) request by
//! request, rebasing its commit, retrying an unreachable service, finishing it, and stopping
//! the member (specs/member.md §3).

use std::time::Duration;

use veil_mls::{CommitOut, MlsError, Provider};

use super::{Event, Flow, Kind, MAX_REBASES, Member, Op, Phase, Step, Stream, TICK, new_op};
use crate::error::CallError;
use crate::io::{Code, Failure, Reply, Request};

impl<P: Provider> Member<P> {
    pub(super) fn finish(&mut self, op: Op, result: Result<Option<u64>, CallError>) {
        match op.id {
            Some(id) => self.events.push_back(Event::Done { id, result }),
            None => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, kind = ?op.kind, "internal step failed");
                }
            }
        }
    }

    pub(super) fn stop(&mut self, error: Option<CallError>) {
        if self.phase == Phase::Stopped {
            return;
        }
        self.phase = Phase::Stopped;
        let removed = matches!(error, Some(CallError::Removed));
        // A member that asked to leave and is removed first (the commit of its own removal
        // overtook the reply to `Leave`) has left: that is the leave's success (MEM-LEAVE-01).
        let outcome = |kind: &Kind| match (removed, kind) {
            (true, Kind::Leave) => Ok(None),
            (true, _) => Err(CallError::Removed),
            (false, _) => Err(CallError::Stopped),
        };
        for op in [self.op.take(), self.rejoin.take()].into_iter().flatten() {
            let r = outcome(&op.kind);
            self.finish(op, r);
        }
        while let Some((id, kind)) = self.queue.pop_front() {
            let r = outcome(&kind);
            self.finish(new_op(id, kind, Duration::ZERO), r);
        }
        self.deferred.clear();
        self.commit_at = None;
        self.next_tick = None;
        if removed {
            self.last_status.removed = true;
            let mut s = self.status();
            s.removed = true;
            self.last_status = s.clone();
            self.events.push_back(Event::Status(s));
        } else {
            self.publish_status();
        }
        self.events.push_back(Event::Stopped { error });
    }

    /// Move every piece forward as far as `now` allows.
    pub(super) fn advance(&mut self, now: Duration) {
        if self.phase == Phase::Stopped {
            return;
        }
        // The resync rejoin first: nothing else can run while out of the group.
        if let Some(op) = self.rejoin.take() {
            self.rejoin = self.step(op, now);
        }
        if let Some(op) = self.op.take() {
            self.op = self.step(op, now);
        }
        while self.op.is_none() && self.phase == Phase::Running {
            // The service's proposals are committed between commands (MEM-PROP-01).
            let kind = if self.commit_at.is_some_and(|t| t <= now) && self.joined {
                self.commit_at = None;
                if !self.removals.iter().any(|id| self.is_member(id)) {
                    continue;
                }
                (None, Kind::CommitProposals)
            } else if let Some(next) = self.queue.pop_front() {
                next
            } else {
                break;
            };
            let op = new_op(kind.0, kind.1, now + self.cfg.retry_for);
            self.op = self.step(op, now);
        }
        if self.phase != Phase::Running {
            return;
        }
        if self.joined && self.next_tick.is_none() {
            self.next_tick = Some(now + TICK);
        }
        if let Stream::Down(at) = self.stream
            && self.stream_wanted()
            && at <= now
        {
            let from = if self.joined { self.s.epoch() } else { None };
            let id = self.request(Request::Subscribe { from_epoch: from });
            self.stream = Stream::Opening(id, from);
        }
        self.publish_status();
    }

    /// Run `op` as far as it goes now; `None` once it has finished.
    pub(super) fn step(&mut self, mut op: Op, now: Duration) -> Option<Op> {
        loop {
            match std::mem::replace(&mut op.step, Step::Start) {
                Step::Start => match self.begin(&mut op) {
                    Ok(Flow::Going) => {}
                    Ok(Flow::Done(epoch)) => {
                        self.finish(op, Ok(epoch));
                        return None;
                    }
                    Err(e) => {
                        self.finish(op, Err(e));
                        return None;
                    }
                },
                Step::Retry(at, req) if at <= now => {
                    let id = self.request(req.clone());
                    op.step = Step::Wait(id, req);
                }
                Step::JoinAgain(at) if at <= now => {
                    let id = self.request(Request::GroupInfo);
                    op.step = Step::Wait(id, Request::GroupInfo);
                }
                Step::Rebase { target, seen } => {
                    let epoch = self.s.epoch().unwrap_or(0);
                    if self.joined && (epoch >= target || self.proposals_seen > seen) {
                        op.rebases += 1;
                        if op.rebases >= MAX_REBASES {
                            self.finish(
                                op,
                                Err(CallError::Timeout(format!(
                                    "the commit lost {MAX_REBASES} races in a row"
                                ))),
                            );
                            return None;
                        }
                        match self.make_commit(&mut op) {
                            Ok(Flow::Going) => {}
                            Ok(Flow::Done(epoch)) => {
                                self.finish(op, Ok(epoch));
                                return None;
                            }
                            Err(e) => {
                                self.finish(op, Err(e));
                                return None;
                            }
                        }
                    } else if now >= op.deadline {
                        self.finish(
                            op,
                            Err(CallError::Timeout(
                                "waiting for the room's commits to rebase on".into(),
                            )),
                        );
                        return None;
                    } else {
                        op.step = Step::Rebase { target, seen };
                    }
                }
                other => op.step = other,
            }
            // Settled: a request in flight, or waiting for a time or an epoch.
            if !matches!(op.step, Step::Start) {
                let ready = match &op.step {
                    Step::Retry(at, _) | Step::JoinAgain(at) => *at <= now,
                    _ => false,
                };
                if !ready {
                    return Some(op);
                }
            }
        }
    }

    /// The first step of a command.
    pub(super) fn begin(&mut self, op: &mut Op) -> Result<Flow, CallError> {
        let req = match &op.kind {
            Kind::Create => Request::ServiceInfo,
            Kind::Join | Kind::JoinOrCreate | Kind::Rejoin => Request::GroupInfo,
            Kind::AwaitWelcome => Request::PublishKeyPackages {
                key_packages: vec![self.s.key_package(false)?],
            },
            Kind::Add(ids) if !ids.is_empty() => Request::ClaimKeyPackage {
                identity: ids[0].clone(),
            },
            Kind::Add(_) | Kind::Remove(_) | Kind::SelfUpdate | Kind::CommitProposals => {
                return self.make_commit(op);
            }
            Kind::Leave => Request::Leave,
        };
        self.send(op, req);
        Ok(Flow::Going)
    }

    /// Make this command's commit and send it (MEM-CMT-01), unless there is nothing to commit.
    pub(super) fn make_commit(&mut self, op: &mut Op) -> Result<Flow, CallError> {
        if !self.joined {
            if self.rejoin.is_some() {
                // Out of the group while rejoining: make the commit once back in (MEM-SYNC-03).
                op.step = Step::Rebase {
                    target: 0,
                    seen: self.proposals_seen,
                };
                return Ok(Flow::Going);
            }
            return Err(MlsError::NotInGroup.into());
        }
        let out: CommitOut = match &op.kind {
            Kind::Add(_) => self.s.add_members(&op.key_packages)?,
            Kind::Remove(ids) => {
                let refs: Vec<&[u8]> = ids.iter().map(|s| s.as_bytes()).collect();
                self.s.remove_members(&refs)?
            }
            Kind::SelfUpdate => self.s.self_update()?,
            Kind::CommitProposals => {
                if !self.removals.iter().any(|id| self.is_member(id)) {
                    return Ok(Flow::Done(self.s.epoch()));
                }
                self.s.commit_pending_proposals()?
            }
            other => {
                return Err(CallError::Mls(MlsError::Internal(format!(
                    "{other:?} makes no commit"
                ))));
            }
        };
        op.made_in = self.s.epoch().unwrap_or(0);
        self.send(op, out.into());
        Ok(Flow::Going)
    }

    /// The reply to `op`'s request; returns the op if it goes on.
    pub(super) fn on_reply(&mut self, mut op: Op, reply: Reply, now: Duration) -> Option<Op> {
        let Step::Wait(_, req) = std::mem::replace(&mut op.step, Step::Start) else {
            unreachable!("routed by request id")
        };
        match self.on_reply_inner(&mut op, req, reply, now) {
            Ok(Some(epoch)) => {
                self.finish(op, Ok(epoch));
                None
            }
            Ok(None) => Some(op),
            Err(e) => {
                if matches!(op.kind, Kind::Rejoin) {
                    // Out of the group with no way back: the member cannot go on.
                    self.finish(op, Err(CallError::Stopped));
                    self.stop(Some(e));
                } else {
                    self.finish(op, Err(e));
                }
                None
            }
        }
    }

    /// `Ok(Some(result))`: the op finished; `Ok(None)`: it goes on (its step is set).
    #[allow(clippy::too_many_lines)] // one arm per request kind, each a few lines
    pub(super) fn on_reply_inner(
        &mut self,
        op: &mut Op,
        req: Request,
        reply: Reply,
        now: Duration,
    ) -> Result<Option<Option<u64>>, CallError> {
        let group_commit = matches!(req, Request::SendCommit { .. }) && !op.kind.joins();
        if let Reply::Failed(Failure::Unavailable(m)) = &reply {
            if now < op.deadline {
                op.step = Step::Retry(now + op.backoff.next_delay(self.jitter.unit()), req);
                return Ok(None);
            }
            if group_commit {
                self.s.discard_commit()?;
            }
            if op.kind.joins() && self.s.epoch().is_some() && !self.joined {
                self.s.leave_locally();
            }
            return Err(CallError::Service(Failure::Unavailable(m.clone())));
        }
        let rebase = |f: &Failure| {
            matches!(
                f,
                Failure::Stale { .. }
                    | Failure::Refused {
                        code: Code::FailedPrecondition,
                        ..
                    }
            )
        };
        match (req, reply) {
            (
                Request::ServiceInfo,
                Reply::ServiceInfo {
                    external_sender_key,
                    external_sender_identity,
                },
            ) => {
                self.s.create_group_with_external_senders(
                    self.cfg.room.as_bytes(),
                    &[(external_sender_key, external_sender_identity)],
                    now,
                )?;
                let gi = self.s.group_info()?;
                op.created = Some(gi.clone());
                self.send(op, Request::CreateRoom { group_info: gi });
                Ok(None)
            }
            (Request::CreateRoom { .. }, Reply::Ok) => {
                self.joined = true;
                self.after_epoch_change();
                Ok(Some(self.s.epoch()))
            }
            (
                Request::CreateRoom { .. },
                Reply::Failed(Failure::Refused {
                    code: Code::AlreadyExists,
                    ..
                }),
            ) if op.created.is_some() => {
                // Someone created it first, or this member did and the reply of its first
                // attempt was lost: the room's GroupInfo tells which (MEM-JOIN-04).
                self.send(op, Request::GroupInfo);
                Ok(None)
            }
            (Request::GroupInfo, Reply::GroupInfo { group_info, .. }) if op.created.is_some() => {
                if op.created.take().as_deref() == Some(&group_info[..]) {
                    self.joined = true;
                    self.after_epoch_change();
                    return Ok(Some(self.s.epoch()));
                }
                self.s.leave_locally();
                if op.kind != Kind::JoinOrCreate {
                    return Err(CallError::Service(Failure::Refused {
                        code: Code::AlreadyExists,
                        message: format!("room {} exists", self.cfg.room),
                    }));
                }
                // Theirs: join it, from the GroupInfo in hand.
                op.kind = Kind::Join;
                let out = self.s.join_external(&group_info, now)?;
                self.send(op, out.into());
                Ok(None)
            }
            (
                Request::GroupInfo,
                Reply::Failed(Failure::Refused {
                    code: Code::NotFound,
                    ..
                }),
            ) if op.kind == Kind::JoinOrCreate => {
                self.send(op, Request::ServiceInfo);
                Ok(None)
            }
            (Request::GroupInfo, Reply::GroupInfo { group_info, .. }) => {
                let out = self.s.join_external(&group_info, now)?;
                self.send(op, out.into());
                Ok(None)
            }
            (Request::ClaimKeyPackage { .. }, Reply::KeyPackage(kp)) => {
                op.key_packages.push(kp);
                let Kind::Add(ids) = &op.kind else {
                    unreachable!("only Add claims")
                };
                if let Some(next) = ids.get(op.key_packages.len()).cloned() {
                    self.send(op, Request::ClaimKeyPackage { identity: next });
                    return Ok(None);
                }
                match self.make_commit(op)? {
                    Flow::Going => Ok(None),
                    Flow::Done(epoch) => Ok(Some(epoch)),
                }
            }
            (Request::PublishKeyPackages { .. }, Reply::Ok) => {
                self.awaiting_welcome = true;
                Ok(Some(None))
            }
            (Request::Leave, r) => {
                self.s.leave_locally();
                self.joined = false;
                let result = match r {
                    Reply::Failed(f) => Err(CallError::Service(f)),
                    _ => Ok(None),
                };
                self.stop(None);
                result.map(Some)
            }
            (Request::SendCommit { .. }, Reply::CommitAccepted { epoch }) if op.kind.joins() => {
                // An external join won (MEM-JOIN-02): resubscribe from the new epoch.
                self.joined = true;
                self.stream = Stream::Down(now);
                let sent_in = self.s.epoch().unwrap_or(1).saturating_sub(1);
                self.acknowledged.push(sent_in);
                self.after_epoch_change();
                Ok(Some(Some(epoch)))
            }
            (Request::SendCommit { .. }, Reply::CommitAccepted { epoch }) => {
                self.s.confirm_commit(now)?;
                self.acknowledged.push(op.made_in);
                self.after_epoch_change();
                Ok(Some(Some(epoch)))
            }
            (Request::SendCommit { .. }, Reply::Failed(f)) if op.kind.joins() => {
                self.s.leave_locally();
                if rebase(&f) && now < op.deadline {
                    // Lost the epoch, or our old leaf is still being removed: again from the
                    // newer GroupInfo (MEM-JOIN-03).
                    op.step = Step::JoinAgain(now + op.join_backoff);
                    if matches!(f, Failure::Refused { .. }) {
                        op.join_backoff = (op.join_backoff * 2).min(Duration::from_secs(1));
                    }
                    return Ok(None);
                }
                Err(CallError::Service(f))
            }
            (Request::SendCommit { .. }, Reply::Failed(f)) => {
                self.s.discard_commit()?;
                if rebase(&f) {
                    let target = match &f {
                        Failure::Stale {
                            room_epoch: Some(r),
                            ..
                        } => *r,
                        _ => op.made_in + 1,
                    };
                    op.step = Step::Rebase {
                        target,
                        seen: self.proposals_seen,
                    };
                    return Ok(None);
                }
                Err(CallError::Service(f))
            }
            (_, Reply::Failed(f)) => Err(CallError::Service(f)),
            (req, reply) => Err(CallError::Mls(MlsError::Internal(format!(
                "unexpected reply {reply:?} to {req:?}"
            )))),
        }
    }

    pub(super) fn send(&mut self, op: &mut Op, req: Request) {
        let id = self.request(req.clone());
        op.step = Step::Wait(id, req);
    }
}
