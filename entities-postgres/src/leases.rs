//! Partition leases: which process runs which partition. The database is the coordinator:
//! every process keeps a membership row alive, renews the leases it holds, and from the live
//! members computes its fair share of the partitions. A process over its share hands the
//! extra partitions over (after its runtime has stored what it holds of them); a process
//! under its share takes free or expired ones, incrementing their epoch. Taking or giving up a
//! partition takes its exclusive advisory lock, so it waits for the commits under way, which
//! hold it shared (see the writer).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use entities_core::store::OwnershipEvent;
use entities_core::StoreError;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::schema::LOCK_CLASS;
use crate::{pg_error, Inner};

/// The partitions held, with their epochs.
pub(crate) type Held = BTreeMap<u32, i64>;

/// What this process has seen of other processes' leases, by its own clock. A lease is taken
/// over only once this process has seen it unrenewed for a whole lease period while its own
/// lease rounds went through without a gap: the database's clock alone cannot tell a dead
/// owner from a database that was frozen or slow (after such a pause every lease looks
/// expired, though each owner renews at its next round).
#[derive(Default)]
pub(crate) struct Observed {
    /// When this process's leases were last renewed.
    last_renewal: Option<Instant>,
    /// Per partition: the lease as last read (owner, epoch, expiry) and since when it has
    /// been seen unchanged.
    leases: HashMap<u32, (Option<i64>, i64, String, Instant)>,
}

impl Observed {
    /// Notes a renewal of this process's leases at `now`; a gap over `max_gap` since the
    /// previous one (a pause of the database or of this process) forgets what was seen.
    fn renewed(&mut self, now: Instant, max_gap: Duration) {
        if self
            .last_renewal
            .is_none_or(|last| now.duration_since(last) > max_gap)
        {
            self.leases.clear();
        }
        self.last_renewal = Some(now);
    }

    /// Notes a lease as read at `now`; returns how long it has been seen unchanged.
    fn saw(&mut self, part: u32, lease: (Option<i64>, i64, String), now: Instant) -> Duration {
        let entry = self
            .leases
            .entry(part)
            .or_insert_with(|| (lease.0, lease.1, lease.2.clone(), now));
        if (entry.0, entry.1, &entry.2) != (lease.0, lease.1, &lease.2) {
            *entry = (lease.0, lease.1, lease.2, now);
        }
        now.duration_since(entry.3)
    }
}

/// Millisecond count for SQL intervals.
fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// The share of `count` partitions of member `index` out of `members`.
pub(crate) fn share(count: u32, members: usize, index: usize) -> usize {
    let members = members.max(1);
    let base = count as usize / members;
    base + usize::from(index < count as usize % members)
}

impl Inner {
    /// One round: keeps membership, renews leases (reporting the lost ones), and takes or
    /// hands over partitions towards this process's share.
    pub(crate) async fn sync_leases(self: &Arc<Self>) -> Result<(), StoreError> {
        let _round = self.lease_round.lock().await;
        let failed = |e| pg_error("lease renewal failed", e);
        let lease = ms(self.options.lease);
        let conn = self.connection().await?;
        conn.execute(
            "INSERT INTO entities_members (node, expires_at) \
             VALUES ($1, now() + $2::bigint * interval '1 millisecond') \
             ON CONFLICT (node) DO UPDATE SET expires_at = excluded.expires_at",
            &[&self.node, &lease],
        )
        .await
        .map_err(failed)?;
        // Only the partitions held are renewed: one given up here but not in the database
        // (a failed hand-over) expires and is taken again.
        let held_now: Vec<i32> = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .map(|p| *p as i32)
            .collect();
        let renewed = conn
            .query(
                "UPDATE entities_leases SET expires_at = now() + $2::bigint * interval '1 millisecond' \
                 WHERE owner = $1 AND part = ANY($3) RETURNING part, epoch",
                &[&self.node, &lease, &held_now],
            )
            .await
            .map_err(failed)?;
        let renewed: Held = renewed
            .iter()
            .map(|row| (row.get::<_, i32>(0) as u32, row.get::<_, i64>(1)))
            .collect();
        // Rounds come every quarter lease: a gap of half a lease means this process could
        // not have seen renewals meanwhile.
        self.observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .renewed(Instant::now(), self.options.lease / 2);
        let lost: Vec<u32> = {
            let mut held = self
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let lost: Vec<u32> = held
                .iter()
                .filter(|(p, epoch)| renewed.get(p) != Some(epoch))
                .map(|(p, _)| *p)
                .collect();
            for p in &lost {
                held.remove(p);
            }
            lost
        };
        if !lost.is_empty() {
            warn!(partitions = ?lost, "lost partitions to another process (the lease expired)");
            let _ = self.events.send(OwnershipEvent::Lost(lost));
        }
        if self.is_closed() {
            return Ok(());
        }
        let members: Vec<i64> = conn
            .query(
                "SELECT node FROM entities_members WHERE expires_at > now() ORDER BY node",
                &[],
            )
            .await
            .map_err(failed)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        // Replies for processes that are gone are never taken.
        conn.execute(
            "DELETE FROM entities_replies r WHERE NOT EXISTS \
             (SELECT 1 FROM entities_members m WHERE m.node = r.node) \
             AND r.created < now() - $1::bigint * interval '1 millisecond'",
            &[&lease],
        )
        .await
        .map_err(failed)?;
        drop(conn);
        let index = members.iter().position(|n| *n == self.node).unwrap_or(0);
        let target = share(self.count, members.len(), index);
        // Partitions being handed over no longer count (some may be gone from `held`).
        let holding = {
            let held = self
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let releasing = self
                .releasing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            held.keys().filter(|p| !releasing.contains(p)).count()
        };
        if holding > target {
            self.hand_over(holding - target);
        } else if holding < target {
            let takeable = self.takeable().await?;
            if !takeable.is_empty() {
                self.take(target - holding, &takeable).await?;
            }
        }
        Ok(())
    }

    /// The partitions this process may take: free ones, and expired ones it has seen
    /// unrenewed for a whole lease period of its own observation (see [`Observed`]).
    async fn takeable(&self) -> Result<Vec<i32>, StoreError> {
        let conn = self.connection().await?;
        let rows = conn
            .query(
                "SELECT part, owner, epoch, expires_at::text, expires_at < now() \
                 FROM entities_leases",
                &[],
            )
            .await
            .map_err(|e| pg_error("cannot read partition leases", e))?;
        let now = Instant::now();
        let mut observed = self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut takeable = Vec::new();
        for row in &rows {
            let part: i32 = row.get(0);
            let owner: Option<i64> = row.get(1);
            let lease = (owner, row.get::<_, i64>(2), row.get::<_, String>(3));
            let unchanged = observed.saw(part as u32, lease, now);
            let expired: bool = row.get(4);
            let free = owner.is_none();
            if owner != Some(self.node) && (free || (expired && unchanged >= self.options.lease)) {
                takeable.push(part);
            }
        }
        Ok(takeable)
    }

    /// Hands `n` partitions over: the runtime first stores what it holds of them and
    /// answers; only then are they given up. The round does not wait for the runtime (leases
    /// keep being renewed meanwhile, the partitions included).
    fn hand_over(self: &Arc<Self>, n: usize) {
        let parts: Vec<u32> = {
            let held = self
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut releasing = self
                .releasing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let parts: Vec<u32> = held
                .keys()
                .rev()
                .filter(|p| !releasing.contains(p))
                .take(n)
                .copied()
                .collect();
            releasing.extend(parts.iter().copied());
            parts
        };
        if parts.is_empty() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let sent = self
            .events
            .send(OwnershipEvent::Release(parts.clone(), tx))
            .is_ok();
        let inner = self.clone();
        tokio::spawn(async move {
            if sent && rx.await.is_ok() {
                match inner.release(&parts).await {
                    Ok(()) => info!(partitions = ?parts, "handed partitions over"),
                    Err(err) => {
                        warn!(error = %err, partitions = ?parts, "could not hand partitions over");
                    }
                }
            }
            let mut releasing = inner
                .releasing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for p in &parts {
                releasing.remove(p);
            }
        });
    }

    /// Gives up `parts` in the database (after the runtime let go of them).
    pub(crate) async fn release(&self, parts: &[u32]) -> Result<(), StoreError> {
        let failed = |e| pg_error("cannot hand partitions over", e);
        let mut sorted: Vec<i32> = parts.iter().map(|p| *p as i32).collect();
        sorted.sort_unstable();
        {
            let mut held = self
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for p in parts {
                held.remove(p);
            }
        }
        let mut conn = self.connection().await?;
        let tx = conn.transaction().await.map_err(failed)?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}",
            ms(self.options.lease / 4).max(50)
        ))
        .await
        .map_err(failed)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, p) FROM unnest($2::int[]) p",
            &[&LOCK_CLASS, &sorted],
        )
        .await
        .map_err(failed)?;
        tx.execute(
            "UPDATE entities_leases SET owner = NULL, expires_at = '-infinity' \
             WHERE part = ANY($1) AND owner = $2",
            &[&sorted, &self.node],
        )
        .await
        .map_err(failed)?;
        tx.execute("SELECT pg_notify('entities_leases', '')", &[])
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(())
    }

    /// Takes up to `n` of the partitions `candidates` that are still free or expired.
    async fn take(&self, n: usize, candidates: &[i32]) -> Result<(), StoreError> {
        let failed = |e| pg_error("cannot take partitions", e);
        let lease = ms(self.options.lease);
        let mut conn = self.connection().await?;
        let tx = conn.transaction().await.map_err(failed)?;
        // The previous owner's commits under way hold the partitions' locks shared; one
        // that does not finish (a stopped process) is ended by the server, meanwhile this
        // round gives up and tries again.
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}",
            ms(self.options.lease / 4).max(50)
        ))
        .await
        .map_err(failed)?;
        let free: Vec<i32> = tx
            .query(
                "SELECT part FROM entities_leases \
                 WHERE (owner IS NULL OR expires_at < now()) AND owner IS DISTINCT FROM $2 \
                   AND part = ANY($3) \
                 ORDER BY part LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&(n as i64), &self.node, &candidates],
            )
            .await
            .map_err(failed)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if free.is_empty() {
            return Ok(());
        }
        // Waits for the commits under way of the previous owner.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, p) FROM unnest($2::int[]) p",
            &[&LOCK_CLASS, &free],
        )
        .await
        .map_err(failed)?;
        let taken = tx
            .query(
                "UPDATE entities_leases SET owner = $1, epoch = epoch + 1, \
                   expires_at = now() + $3::bigint * interval '1 millisecond' \
                 WHERE part = ANY($2) RETURNING part, epoch",
                &[&self.node, &free, &lease],
            )
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        let taken: Held = taken
            .iter()
            .map(|row| (row.get::<_, i32>(0) as u32, row.get::<_, i64>(1)))
            .collect();
        let parts: Vec<u32> = taken.keys().copied().collect();
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(taken);
        info!(partitions = ?parts, "took partitions");
        let _ = self.events.send(OwnershipEvent::Acquired(parts));
        Ok(())
    }

    /// Renews and balances every quarter lease, and at once when another process joins or
    /// leaves, until the store closes.
    pub(crate) async fn run_leases(self: Arc<Self>) {
        let tick = self.options.lease / 4;
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = self.leases_changed.notified() => {}
            }
            if self.is_closed() {
                return;
            }
            if self.leases_paused() {
                continue;
            }
            if let Err(err) = self.sync_leases().await {
                warn!(error = %err, "lease round failed; retrying");
            } else {
                debug!("lease round done");
            }
        }
    }

    /// Lets go of every partition and of membership (a graceful stop).
    pub(crate) async fn leave(&self) -> Result<(), StoreError> {
        let parts: Vec<u32> = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        if !parts.is_empty() {
            self.release(&parts).await?;
        }
        let conn = self.connection().await?;
        conn.execute(
            "DELETE FROM entities_members WHERE node = $1",
            &[&self.node],
        )
        .await
        .map_err(|e| pg_error("cannot leave", e))?;
        conn.execute("SELECT pg_notify('entities_leases', '')", &[])
            .await
            .map_err(|e| pg_error("cannot leave", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_add_up() {
        for count in [1u32, 7, 32, 64] {
            for members in 1..6 {
                let total: usize = (0..members).map(|i| share(count, members, i)).sum();
                assert_eq!(total, count as usize);
            }
        }
        assert_eq!(share(32, 3, 0), 11);
        assert_eq!(share(32, 3, 2), 10);
    }
}
