//! Expiry of idle entities (see [`RuntimeBuilder::entity_ttl`](crate::RuntimeBuilder::entity_ttl)).
//!
//! Nothing is kept in memory per idle entity: a background sweep asks the store for the
//! entities of each expiring name that were last written before their TTL, hold no lock and
//! have no stored message, and sends each an `Expire` message. The message runs in the
//! entity's own queue and deletes the state only if the entity is still idle then, so a signal
//! racing the expiry either runs before it (and keeps the entity alive) or after it.

use std::time::Duration;

use tracing::{debug, warn};

use crate::client::Client;
use crate::error::Error;
use crate::message::{Body, Message, Target};

/// Most candidates asked of the store at once.
const PAGE: usize = 1000;

/// Most pages sent per name in one sweep, so that one name cannot hold up the others.
const PAGES_PER_SWEEP: usize = 100;

/// How often the sweep runs for these TTLs: a quarter of the shortest, between 50 ms and 60 s.
pub(crate) fn interval(ttls: impl Iterator<Item = Duration>) -> Duration {
    let shortest = ttls.min().unwrap_or(Duration::from_secs(60));
    (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(60))
}

/// Runs the sweep until the runtime stops.
pub(crate) async fn sweep(client: Client) {
    let every = interval(client.shared.registry.ttls.values().copied());
    loop {
        tokio::time::sleep(every).await;
        if let Err(Error::Shutdown) = sweep_once(&client).await {
            return;
        }
        if client.is_shut_down() {
            return;
        }
    }
}

/// Sends an `Expire` message to every idle entity named `name`; returns how many.
async fn sweep_name(client: &Client, name: &str, ttl: Duration) -> Result<usize, Error> {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let mut sent = 0;
    for _ in 0..PAGES_PER_SWEEP {
        // Those last written at or before `now - ttl` (the bound is exclusive).
        let before = client
            .shared
            .now_millis()
            .saturating_sub(ttl_ms)
            .saturating_add(1);
        let idle = client
            .shared
            .store
            .idle_entities(name, before, PAGE)
            .await?;
        let full = idle.len() >= PAGE;
        sent += idle.len();
        let messages: Vec<Message> = idle
            .into_iter()
            .map(|id| Message {
                id: client.shared.next_message_id(),
                target: Target::Entity(id),
                deliver_at: None,
                body: Body::Expire { ttl_ms },
            })
            .collect();
        if !messages.is_empty() {
            client.store_and_deliver(messages, None).await?;
        }
        if !full {
            break;
        }
    }
    Ok(sent)
}

/// One sweep of every expiring name, at the clock's time (the sweeper task runs it
/// periodically; a manual clock at each time it moves to). A name whose sweep fails is logged
/// and swept again next time; the runtime's shutdown ends the sweep.
pub(crate) async fn sweep_once(client: &Client) -> Result<(), Error> {
    for (name, ttl) in &client.shared.registry.ttls {
        match sweep_name(client, name, *ttl).await {
            Ok(0) => {}
            Ok(sent) => debug!(entity = %name, candidates = sent, "expiry sweep"),
            Err(Error::Shutdown) => return Err(Error::Shutdown),
            Err(err) => {
                warn!(entity = %name, error = %err, "expiry sweep failed; it runs again later");
            }
        }
    }
    Ok(())
}

/// The earliest time after `now`, and at most `until`, at which an entity that is idle now
/// expires (its last write plus its TTL), if any: a manual clock stops there.
pub(crate) async fn next_expiry(
    client: &Client,
    now: u64,
    until: u64,
) -> Result<Option<u64>, Error> {
    let store = &client.shared.store;
    let mut next: Option<u64> = None;
    for (name, ttl) in &client.shared.registry.ttls {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let before = until.saturating_sub(ttl_ms).saturating_add(1);
        for id in store.idle_entities(name, before, PAGE).await? {
            if let Some(record) = store.read_entity(&id).await? {
                let at = record.last_modified.saturating_add(ttl_ms);
                if at > now && at <= until {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_a_quarter_of_the_shortest_ttl_within_bounds() {
        let secs = Duration::from_secs;
        assert_eq!(interval([secs(8), secs(4)].into_iter()), secs(1));
        assert_eq!(
            interval([Duration::from_millis(100)].into_iter()),
            Duration::from_millis(50)
        );
        assert_eq!(interval([secs(3600)].into_iter()), secs(60));
    }
}
