//! Faults of the store: the sends of a commit that failed kept to be made again or failed,
//! and the recovery that reloads what the store holds and resumes.

use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::commits::Effects;
use super::protocol::{answer_stored, resendable, Command, Resend, Stored};
use super::Engine;
use crate::error::{StoreError, StoreErrorKind};
use crate::message::Message;

impl Engine {
    /// The effects of a batch that did not commit: client sends that can be made again are
    /// kept for after the recovery (see [`resendable`]); every other waiter hears `err`.
    pub(super) fn failed_effects(&mut self, effects: Effects, err: &StoreError) {
        answer_stored(&self.shared.intake, effects.stored, Some(err));
        match effects.resend {
            Some((messages, keys)) if resendable(err) && !effects.sends.is_empty() => {
                self.keep_for_resend(messages, keys, effects.sends);
            }
            _ => answer_stored(&self.shared.intake, effects.sends, Some(err)),
        }
    }

    /// Keeps client sends to be made again after the recovery.
    pub(super) fn keep_for_resend(
        &mut self,
        messages: Vec<Message>,
        keys: Vec<crate::store::IdempotencyKey>,
        acks: Vec<Stored>,
    ) {
        let taken_in = self.turn_began;
        let Some(since) = acks.iter().map(|a| a.since.unwrap_or(taken_in)).min() else {
            return;
        };
        self.resend.push(Resend {
            since,
            messages,
            keys,
            acks,
        });
    }

    /// Fails the sends kept through an outage (to send again, or postponed commands) that
    /// have waited the store's `unavailable_timeout`: nothing of them was applied. A store
    /// that cannot come back (`cause` of kind `Gone`) fails them all at once, with `cause`.
    pub(super) fn expire_waiting_sends(
        &mut self,
        postponed: &mut Vec<Command>,
        cause: &StoreError,
    ) {
        let permanent = cause.kind() == StoreErrorKind::Gone;
        let timeout = if permanent {
            Duration::ZERO
        } else {
            self.shared.store.unavailable_timeout()
        };
        let now = tokio::time::Instant::now();
        let gave_up = || {
            if permanent {
                return cause.clone();
            }
            StoreError::of_kind(
                StoreErrorKind::Unavailable,
                format!(
                    "the store could not be reached for {timeout:?}; nothing of this send was \
                     applied"
                ),
            )
        };
        let (expired, kept): (Vec<Resend>, Vec<Resend>) = std::mem::take(&mut self.resend)
            .into_iter()
            .partition(|r| r.since + timeout <= now);
        self.resend = kept;
        for resend in expired {
            answer_stored(&self.shared.intake, resend.acks, Some(&gave_up()));
        }
        let mut kept = Vec::with_capacity(postponed.len());
        for command in postponed.drain(..) {
            match command {
                Command::Deliver {
                    stored: Some(stored),
                    ..
                } if stored.since.is_some_and(|since| since + timeout <= now) => {
                    answer_stored(&self.shared.intake, vec![stored], Some(&gave_up()));
                }
                other => kept.push(other),
            }
        }
        *postponed = kept;
    }

    /// Sends again, after a recovery, the client sends kept through the fault, oldest first.
    pub(super) fn resend_kept(&mut self) {
        for resend in std::mem::take(&mut self.resend) {
            if !resend.messages.is_empty() {
                debug!(
                    messages = resend.messages.len(),
                    "sending again what a failed commit did not apply"
                );
            }
            self.ingested.extend(resend.messages.iter().cloned());
            self.ingested_acks.extend(resend.acks);
            self.ingested_keys.extend(resend.keys);
            for message in resend.messages {
                if self.ownership.owns(&message) {
                    self.deliver(message);
                }
            }
        }
    }

    /// After a fault: answers the senders it holds with the cause, drops everything in
    /// memory, and recovers from the store once it accepts writes again. Returns false if
    /// the runtime is to stop instead.
    pub(super) async fn recover(&mut self, fault: StoreError) -> bool {
        error!(error = %fault, kind = ?fault.kind(), "store fault; the runtime drops what it holds in memory and recovers from the store once it accepts writes");
        self.fail_ingested(&fault);
        // The store refuses every batch queued after a failed one (`committed` answers their
        // senders with the cause); a commit that still landed releases its effects as usual.
        while !self.commits.is_empty() {
            let done = self.commits.next().await;
            let _ = self.committed(done);
        }
        self.entities.reset().await;
        self.orchestrations.reset();
        // Answers of cancels not committed: the stored cancels run again after the recovery.
        self.cancel_replies.clear();
        if self.shutdown.is_some() {
            return false; // stopping anyway: what is stored is recovered at the next start
        }
        // A call whose message is stored runs again after the recovery and answers then.
        self.waiters.retain(|_, tx| !tx.is_closed());
        let mut postponed = Vec::new();
        let mut backoff = Duration::from_millis(20);
        let recovered = loop {
            match self.reload().await {
                Ok(messages) => break messages,
                Err(err) => {
                    warn!(error = %err, retry_in = ?backoff, "the store does not accept writes yet");
                    self.expire_waiting_sends(&mut postponed, &err);
                }
            }
            // Commands wait for the recovery: handled before it, a new message could overtake
            // older stored ones from its sender.
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    command = self.rx.recv() => match command {
                        Some(Command::Shutdown(done)) => {
                            self.shutdown = Some(done);
                            for command in postponed {
                                self.handle(command);
                            }
                            self.fail_ingested(&fault);
                            return false;
                        }
                        Some(mut command) => {
                            if let Command::Deliver { stored: Some(stored), .. } = &mut command {
                                stored.taken_in(tokio::time::Instant::now());
                            }
                            postponed.push(command);
                        }
                        None => return false,
                    },
                    () = &mut sleep => break,
                }
            }
            // Capped low: a database that comes back is served again within a second.
            backoff = (backoff * 2).min(Duration::from_millis(500));
        };
        info!(
            messages = recovered.len(),
            "recovered from the store after a fault"
        );
        for message in recovered {
            self.deliver(message);
        }
        self.resend_kept();
        for command in postponed {
            self.handle(command);
        }
        true
    }

    /// Tells the senders of the client messages taken in but not stored that they are not,
    /// and why; drops the messages.
    pub(super) fn fail_ingested(&mut self, err: &StoreError) {
        answer_stored(
            &self.shared.intake,
            std::mem::take(&mut self.cancel_acks),
            Some(err),
        );
        self.cancelled.clear();
        let messages = std::mem::take(&mut self.ingested);
        let keys = std::mem::take(&mut self.ingested_keys);
        let acks = std::mem::take(&mut self.ingested_acks);
        if resendable(err) && self.partitioned.is_some() {
            self.keep_for_resend(messages, keys, acks);
        } else {
            answer_stored(&self.shared.intake, acks, Some(err));
        }
    }
}
