//! Idempotency keys as stored: the request a key binds, what came of the send that claimed
//! it, and the locks that make sends of one key wait for each other within a process. The
//! client's side is [`Idempotent`](crate::Idempotent).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::message::CallReply;
use crate::store::IdempotencyKey;

/// How long idempotency keys are kept by default.
pub(crate) const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// What came of the send that claimed a key, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum KeyOutcome {
    /// A signal, stored.
    Signalled,
    /// A call: its answer once the operation ran.
    Called(Option<CallReply>),
    /// An orchestration start, with the instance id.
    Started(String),
}

/// A key's row as stored: the request that claimed it and what came of it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Bound {
    pub request: String,
    pub outcome: KeyOutcome,
}

/// A stored outcome as read: bound to its request, or (stored before keys were bound to
/// requests) not.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Stored {
    Bound(Bound),
    Unbound(KeyOutcome),
}

impl KeyOutcome {
    /// The stored outcome of a call that claimed its key for `request`, answered with
    /// `result`.
    pub(crate) fn answer(result: &CallReply, request: Option<&str>) -> Value {
        let outcome = KeyOutcome::Called(Some(result.clone()));
        match request {
            Some(request) => bound(request, outcome),
            None => serde_json::to_value(&outcome).expect("a key outcome serializes"),
        }
    }

    /// The kind of send, as the first word of its request (see [`request_of`]).
    pub(crate) fn send(&self) -> &'static str {
        match self {
            KeyOutcome::Signalled => "signal",
            KeyOutcome::Called(_) => "call",
            KeyOutcome::Started(_) => "start",
        }
    }

    /// The kind of send, for an error.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            KeyOutcome::Signalled => "a signal",
            KeyOutcome::Called(_) => "a call",
            KeyOutcome::Started(_) => "an orchestration start",
        }
    }
}

/// The stored form of `outcome` claimed for `request`.
pub(crate) fn bound(request: &str, outcome: KeyOutcome) -> Value {
    let row = Bound {
        request: request.to_string(),
        outcome,
    };
    serde_json::to_value(&row).expect("a key outcome serializes")
}

/// Longest idempotency key, in bytes.
pub(crate) const MAX_KEY_LEN: usize = 255;

/// The request a key is bound to: the kind of send, its target and operation (or
/// orchestration), and a SHA-256 digest of its input, so that a retry matches and any other
/// request does not.
pub(crate) fn request_of(send: &str, target: &str, input: Option<&Value>) -> String {
    use sha2::Digest;
    let input = input.unwrap_or(&Value::Null).to_string();
    let digest = sha2::Sha256::digest(input.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{send} {target}, input sha256 {hex}")
}

/// Sends of one key within this process wait for each other.
#[derive(Default)]
pub(crate) struct KeyLocks {
    held: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A held key: released when dropped.
pub(crate) struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    pub(crate) async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let mutex = {
            let mut held = self
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            held.entry(key.to_string()).or_default().clone()
        };
        KeyGuard {
            locks: self,
            key: key.to_string(),
            guard: Some(mutex.lock_owned().await),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut held = self
            .locks
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only the map holds it once no send of this key holds or waits for it.
        if held
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            held.remove(&self.key);
        }
    }
}

/// The error for a stored key whose request matches but whose outcome is of another kind of
/// send (a damaged row).
pub(crate) fn other_kind(key: &str) -> Error {
    Error::IdempotencyMismatch {
        key: key.to_string(),
        first: "a send of another kind".into(),
    }
}

/// A new claim of `key` for `request`.
pub(crate) fn claim(key: &str, request: &str, outcome: KeyOutcome, now: u64) -> IdempotencyKey {
    IdempotencyKey {
        key: key.to_string(),
        created: now,
        outcome: bound(request, outcome),
    }
}
