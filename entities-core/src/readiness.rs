//! [`Client::ready`]: whether this process can serve now, for load balancers' readiness
//! probes (`GET /ready` of the HTTP API).

use std::time::Duration;

use crate::client::Client;
use crate::error::{Error, Result, StoreError, StoreErrorKind};

/// How long [`Client::ready`] waits for the store to answer its ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

impl Client {
    /// Whether this process can serve now: `Ok` while the runtime runs and its store answers
    /// ([`Store::ping`](crate::Store::ping): `SELECT 1` on PostgreSQL; stores a process owns
    /// whole always answer). Otherwise [`Error::Shutdown`] once the runtime has shut down, or
    /// [`Error::Store`] with why the store cannot be reached; a store that does not answer
    /// within 2 seconds is [`StoreErrorKind::Unavailable`], so a hung database never hangs
    /// the caller.
    pub async fn ready(&self) -> Result<()> {
        if self.is_shut_down() {
            return Err(Error::Shutdown);
        }
        match tokio::time::timeout(PING_TIMEOUT, self.shared.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(Error::Store(err)),
            Err(_) => Err(Error::Store(StoreError::of_kind(
                StoreErrorKind::Unavailable,
                format!("the store did not answer a ping within {PING_TIMEOUT:?}"),
            ))),
        }
    }
}
