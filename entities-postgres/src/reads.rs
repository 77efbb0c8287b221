//! Reads and claims. Claims (a partition's pending work, arrivals) run in a transaction that
//! takes the partitions' shared advisory locks and checks their leases, like a commit, so a
//! process that lost a partition claims nothing of it.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use entities_core::message::{now_millis, Message, MessageId, Target};
use entities_core::store::{
    EntityQuery, EntityRecord, EntityRecordPage, InstanceQuery, InstanceRecord, InstanceRecordPage,
    LockRecord, Recovery, SetAsideMessage, StoreStats,
};
use entities_core::{partition_of, EntityId, StoreError, StoreErrorKind};
use tracing::warn;

use crate::arrivals::Seen;
use crate::rows::{self, int, MessageRows, INSTANCE_COLUMNS};
use crate::{pg_error, sorted_parts, Inner};

fn read_failed(e: tokio_postgres::Error) -> StoreError {
    pg_error("read failed", e)
}

impl Inner {
    /// Writes outside commits are refused once the store is closed, as commits are.
    fn refuse_if_closed(&self) -> Result<(), StoreError> {
        if self.is_closed() {
            return Err(StoreError::of_kind(
                StoreErrorKind::Closed,
                "the store is closed: its runtime has stopped",
            ));
        }
        Ok(())
    }

    /// The partitions of `parts` this process holds now, checked under their shared locks.
    async fn fenced_parts(
        &self,
        tx: &Transaction<'_>,
        parts: &[u32],
    ) -> Result<Vec<i32>, StoreError> {
        let verified = self.fence(tx).await?;
        Ok(sorted_parts(parts)
            .into_iter()
            .filter(|p| verified.contains(&(*p as u32)))
            .collect())
    }

    /// Moves undecodable messages to the set-aside table, in `tx`.
    async fn set_aside(
        &self,
        tx: &Transaction<'_>,
        rows: &mut MessageRows,
    ) -> Result<usize, StoreError> {
        let bad = std::mem::take(&mut rows.undecodable);
        for message in &bad {
            warn!(message = message.id, error = %message.error, "a stored message cannot be decoded; it is set aside");
            tx.execute(
                "WITH m AS (DELETE FROM entities_messages WHERE id = $1 \
                   RETURNING id, target, deliver_at, body) \
                 INSERT INTO entities_set_aside (id, target, deliver_at, body, error, set_aside_at) \
                 SELECT id, target, deliver_at, body, $2, $3 FROM m ON CONFLICT (id) DO NOTHING",
                &[&int(message.id), &message.error, &int(now_millis())],
            )
            .await
            .map_err(|e| pg_error("cannot set a message aside", e))?;
        }
        Ok(bad.len())
    }

    /// Claims the pending work of `parts`: every message, unscheduled or due by `until`.
    pub(crate) async fn claim_partitions(
        &self,
        parts: &[u32],
        until: (u64, MessageId),
    ) -> Result<Recovery, StoreError> {
        let mut conn = self.connection().await?;
        let tx = conn.transaction().await.map_err(read_failed)?;
        let owned = self.fenced_parts(&tx, parts).await?;
        if owned.len() < parts.len() {
            return Err(StoreError::of_kind(
                StoreErrorKind::Fenced,
                "this process no longer holds the partitions it recovers",
            ));
        }
        // One statement, so one snapshot: the arrivals marked taken are those read, and any
        // stored after it are left to `claim_arrivals`.
        let found = tx
            .query(
                "WITH taken AS (UPDATE entities_messages SET fresh = false \
                   WHERE fresh AND part = ANY($1)) \
                 SELECT id, target, deliver_at, body FROM entities_messages \
                 WHERE part = ANY($1) AND (deliver_at IS NULL OR deliver_at < $2 \
                   OR (deliver_at = $2 AND id <= $3)) ORDER BY seq",
                &[&owned, &int(until.0), &int(until.1)],
            )
            .await
            .map_err(read_failed)?;
        let mut rows = MessageRows::default();
        rows.extend(&found);
        let set_aside = self.set_aside(&tx, &mut rows).await?;
        // The highest id of this process or an older one: newer processes' ids are theirs.
        let max_message_id = tx
            .query_one(
                "SELECT coalesce(max(id), 0) FROM (SELECT max(id) AS id FROM entities_messages \
                   WHERE id < $1 UNION ALL SELECT max(id) FROM entities_set_aside WHERE id < $1) m",
                &[&int(self.first_id() + (1 << crate::NODE_SHIFT))],
            )
            .await
            .map_err(read_failed)?
            .get::<_, i64>(0) as MessageId;
        tx.commit().await.map_err(read_failed)?;
        Ok(Recovery {
            messages: rows.messages,
            max_message_id,
            set_aside,
            partitions: Some(parts.to_vec()),
        })
    }

    /// Takes messages stored for `parts` and not taken yet, in the order stored, by the
    /// cursor of [`crate::arrivals`]: one read, no write (scheduled ones excepted).
    ///
    /// Only partitions whose lease names this process are read. That check takes no lock: a
    /// partition taken over while the read runs may give messages its new owner recovers too,
    /// and the commit that would consume them here fails.
    pub(crate) async fn claim_arrivals(
        &self,
        parts: &[u32],
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let conn = self.connection().await?;
        let (low, read_limit) = {
            let cursor = self
                .arrivals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (cursor.low(), cursor.read_limit(limit))
        };
        // The snapshot's xmin comes from the same statement, so from the snapshot the rows
        // were read with; the outer join gives it when no row is found.
        let read = conn
            .prepare_cached(
                "SELECT m.id, m.target, m.deliver_at, m.body, m.xid, s.xmin \
                 FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin) s \
                 LEFT JOIN LATERAL (SELECT id, target, deliver_at, body, xid \
                   FROM entities_messages WHERE fresh AND part = ANY($1) AND xid >= $2 \
                     AND part IN (SELECT part FROM entities_leases WHERE owner = $4) \
                   ORDER BY xid, seq LIMIT $3) m ON true",
            )
            .await
            .map_err(read_failed)?;
        let found = conn
            .query(
                &read,
                &[&sorted_parts(parts), &low, &(read_limit as i64), &self.node],
            )
            .await
            .map_err(read_failed)?;
        let xmin = found.first().map_or(low, |row| row.get::<_, i64>(5));
        let found: Vec<_> = found
            .into_iter()
            .filter(|row| row.get::<_, Option<i64>>(0).is_some())
            .collect();
        let seen: Vec<Seen> = found
            .iter()
            .map(|row| Seen {
                id: row.get(0),
                xid: row.get(4),
            })
            .collect();
        let unseen = self
            .arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .advance(&seen, xmin, read_limit);
        let new: Vec<_> = found
            .into_iter()
            .zip(unseen)
            .filter_map(|(row, unseen)| unseen.then_some(row))
            .collect();
        let mut rows = MessageRows::default();
        rows.extend(&new);
        // Should what follows fail, the cursor is past these rows already: the runtime
        // recovers after a failed poll, and recovery reads every stored message again.
        //
        // Scheduled arrivals are marked taken: when due beyond the runtime's horizon they are
        // read again by `scheduled`, which skips arrivals not taken.
        let scheduled: Vec<i64> = new
            .iter()
            .filter(|row| row.get::<_, Option<i64>>(2).is_some())
            .map(|row| row.get(0))
            .collect();
        if !scheduled.is_empty() || !rows.undecodable.is_empty() {
            let mut conn = conn;
            let tx = conn.transaction().await.map_err(read_failed)?;
            if !scheduled.is_empty() {
                tx.execute(
                    "UPDATE entities_messages SET fresh = false WHERE id = ANY($1)",
                    &[&scheduled],
                )
                .await
                .map_err(read_failed)?;
            }
            self.set_aside(&tx, &mut rows).await?;
            tx.commit().await.map_err(read_failed)?;
        }
        Ok(rows.messages)
    }

    /// Scheduled messages after the cursor, in `parts` (all when `None`), claimed ones only
    /// when restricted to partitions.
    pub(crate) async fn scheduled(
        &self,
        parts: Option<&[u32]>,
        after: (u64, MessageId),
        until: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let all = parts.is_none();
        let parts = sorted_parts(parts.unwrap_or(&[]));
        let mut conn = self.connection().await?;
        let found = conn
            .query(
                "SELECT id, target, deliver_at, body FROM entities_messages \
                 WHERE deliver_at IS NOT NULL AND ($1 OR (part = ANY($2) AND NOT fresh)) \
                   AND (deliver_at, id) > ($3, $4) AND deliver_at <= $5 \
                 ORDER BY deliver_at, id LIMIT $6",
                &[
                    &all,
                    &parts,
                    &int(after.0),
                    &int(after.1),
                    &int(until),
                    &(limit as i64),
                ],
            )
            .await
            .map_err(read_failed)?;
        let mut rows = MessageRows::default();
        rows.extend(&found);
        if !rows.undecodable.is_empty() {
            let tx = conn.transaction().await.map_err(read_failed)?;
            self.set_aside(&tx, &mut rows).await?;
            tx.commit().await.map_err(read_failed)?;
        }
        Ok(rows.messages)
    }

    /// The scheduled messages of one target, by time then id (through the index by partition
    /// and target; activity messages belong to their instances' partitions).
    pub(crate) async fn scheduled_for(&self, target: &Target) -> Result<Vec<Message>, StoreError> {
        let part = match target {
            Target::Activity => None,
            target => Some(partition_of(target, self.count) as i32),
        };
        let conn = self.connection().await?;
        let found = conn
            .query(
                "SELECT id, target, deliver_at, body FROM entities_messages \
                 WHERE ($2::int IS NULL OR part = $2) AND target = $1 \
                   AND deliver_at IS NOT NULL ORDER BY deliver_at, id",
                &[&target.to_string().into_bytes(), &part],
            )
            .await
            .map_err(read_failed)?;
        let mut rows = MessageRows::default();
        rows.extend(&found);
        Ok(rows.messages)
    }

    /// Up to `limit` entities named `name` with a state, no lock and no stored message, last
    /// written before `before`.
    pub(crate) async fn idle_entities(
        &self,
        name: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<EntityId>, StoreError> {
        let conn = self.connection().await?;
        let found = conn
            .query(
                "SELECT key FROM entities_entities e WHERE name = $1 AND last_modified < $2 \
                 AND state IS NOT NULL AND lock_owner IS NULL AND NOT EXISTS \
                 (SELECT 1 FROM entities_messages m \
                  WHERE m.part = e.part AND m.target = convert_to('@' || e.name || '@', 'UTF8') || e.key) \
                 LIMIT $3",
                &[&name, &int(before), &(limit.min(i64::MAX as usize) as i64)],
            )
            .await
            .map_err(read_failed)?;
        found
            .iter()
            .map(|row| {
                let key = rows::text(row.get::<_, &[u8]>(0));
                EntityId::try_new(name, key.clone()).map_err(|err| {
                    StoreError::corrupt(
                        format!("the stored entity id `@{name}@{key}` is not valid"),
                        format!("@{name}@{key}"),
                        err,
                    )
                })
            })
            .collect()
    }

    pub(crate) async fn set_aside_messages(&self) -> Result<Vec<SetAsideMessage>, StoreError> {
        let conn = self.connection().await?;
        let rows = conn
            .query(
                "SELECT id, target, deliver_at, body, error, set_aside_at FROM entities_set_aside ORDER BY id",
                &[],
            )
            .await
            .map_err(read_failed)?;
        Ok(rows
            .iter()
            .map(|row| SetAsideMessage {
                id: row.get::<_, i64>(0) as u64,
                target: rows::text(row.get::<_, &[u8]>(1)),
                deliver_at: row.get::<_, Option<i64>>(2).map(|t| t as u64),
                body: row.get(3),
                error: row.get(4),
                set_aside_at: row.get::<_, i64>(5) as u64,
            })
            .collect())
    }

    pub(crate) async fn load_entities(
        &self,
        ids: Vec<EntityId>,
    ) -> Result<Vec<EntityRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = ids.iter().map(entities_core::EntityId::name).collect();
        let keys: Vec<&[u8]> = ids.iter().map(|id| id.key().as_bytes()).collect();
        let conn = self.connection().await?;
        let found = conn
            .query(
                "SELECT e.name, e.key, e.state, e.lock_owner, e.last_modified, e.state_version \
                 FROM entities_entities e \
                 JOIN unnest($1::text[], $2::bytea[]) AS w(name, key) \
                   ON e.name = w.name AND e.key = w.key",
                &[&names, &keys],
            )
            .await
            .map_err(read_failed)?;
        let mut by_id = HashMap::with_capacity(found.len());
        for row in &found {
            let id = rows::entity_id(row)?;
            by_id.insert(id.clone(), rows::entity(id, row, 2, None)?);
        }
        // In the order asked for.
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    pub(crate) async fn read_entity(
        &self,
        id: &EntityId,
    ) -> Result<Option<EntityRecord>, StoreError> {
        let conn = self.connection().await?;
        let row = conn
            .query_opt(
                "SELECT state, lock_owner, last_modified, state_version, \
                   (SELECT count(*) FROM entities_messages WHERE part = $4 AND target = $3) \
                 FROM entities_entities WHERE name = $1 AND key = $2",
                &[
                    &id.name(),
                    &id.key().as_bytes(),
                    &id.to_string().into_bytes(),
                    &(partition_of(&Target::Entity(id.clone()), self.count) as i32),
                ],
            )
            .await
            .map_err(read_failed)?;
        row.map(|row| rows::entity(id.clone(), &row, 0, Some(4)))
            .transpose()
    }

    pub(crate) async fn idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<entities_core::store::IdempotencyKey>, StoreError> {
        let conn = self.connection().await?;
        let row = conn
            .query_opt(
                "SELECT created, outcome FROM entities_keys WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(read_failed)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let outcome: String = row.get(1);
        let parsed = serde_json::from_str(&outcome).map_err(|err| {
            StoreError::corrupt(
                format!("the stored outcome of idempotency key `{key}` is not JSON"),
                outcome.clone(),
                err,
            )
        })?;
        Ok(Some(entities_core::store::IdempotencyKey {
            key: key.to_string(),
            created: row.get::<_, i64>(0).max(0) as u64,
            outcome: parsed,
        }))
    }

    pub(crate) async fn query_entities(
        &self,
        query: &EntityQuery,
    ) -> Result<EntityRecordPage, StoreError> {
        let (after_name, after_key) = match &query.continuation {
            Some(token) => serde_json::from_str::<(String, String)>(token)
                .map_err(|e| StoreError::with_source("invalid continuation token", e))?,
            None => (String::new(), String::new()),
        };
        let first_page = query.continuation.is_none();
        let name = query.name.as_ref().map(|n| n.to_lowercase());
        let prefix = query.key_prefix.as_ref().map(|p| p.as_bytes().to_vec());
        let page_size = query.page_size.max(1);
        let conn = self.connection().await?;
        let found = conn
            .query(
                "SELECT name, key, CASE WHEN $1 THEN state END, lock_owner, last_modified, \
                   state_version, (SELECT count(*) FROM entities_messages m \
                    WHERE m.part = e.part AND m.target = convert_to('@' || e.name || '@', 'UTF8') || e.key) \
                 FROM entities_entities e \
                 WHERE ($2::text IS NULL OR name = $2) \
                   AND ($3::bytea IS NULL OR substring(key FROM 1 FOR length($3)) = $3) \
                   AND ($4 OR state IS NOT NULL) \
                   AND ($5 OR (name, key) > ($6, $7)) \
                 ORDER BY name, key LIMIT $8",
                &[
                    &query.include_state,
                    &name,
                    &prefix,
                    &query.include_stateless,
                    &first_page,
                    &after_name,
                    &after_key.as_bytes(),
                    &(page_size as i64 + 1),
                ],
            )
            .await
            .map_err(read_failed)?;
        let mut entities = Vec::with_capacity(found.len());
        for row in &found {
            let id = rows::entity_id(row)?;
            entities.push(rows::entity(id, row, 2, Some(6))?);
        }
        let continuation = if entities.len() > page_size {
            entities.truncate(page_size);
            let last = entities.last().expect("page is not empty");
            Some(serde_json::Value::from(vec![last.id.name(), last.id.key()]).to_string())
        } else {
            None
        };
        Ok(EntityRecordPage {
            entities,
            continuation,
        })
    }

    pub(crate) async fn delete_empty_entities(&self) -> Result<u64, StoreError> {
        self.refuse_if_closed()?;
        let conn = self.connection().await?;
        conn.execute(
            "DELETE FROM entities_entities e WHERE state IS NULL AND lock_owner IS NULL \
             AND NOT EXISTS (SELECT 1 FROM entities_messages m \
               WHERE m.part = e.part AND m.target = convert_to('@' || e.name || '@', 'UTF8') || e.key)",
            &[],
        )
        .await
        .map_err(|e| pg_error("cannot delete empty entities", e))
    }

    pub(crate) async fn read_instance(
        &self,
        id: &str,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        let conn = self.connection().await?;
        let row = conn
            .query_opt(
                &format!("SELECT {INSTANCE_COLUMNS} FROM entities_instances WHERE id = $1"),
                &[&id.as_bytes()],
            )
            .await
            .map_err(read_failed)?;
        row.map(|row| rows::instance(&row)).transpose()
    }

    pub(crate) async fn read_history(
        &self,
        id: &str,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let conn = self.connection().await?;
        let found = conn
            .query(
                "SELECT seq, event FROM entities_history WHERE instance = $1 ORDER BY seq",
                &[&id.as_bytes()],
            )
            .await
            .map_err(read_failed)?;
        found.iter().map(|row| rows::event(id, row)).collect()
    }

    pub(crate) async fn purge_instance(&self, id: &str) -> Result<bool, StoreError> {
        self.refuse_if_closed()?;
        let mut conn = self.connection().await?;
        let failed = |e| pg_error("cannot purge the instance", e);
        let tx = conn.transaction().await.map_err(failed)?;
        tx.execute(
            "DELETE FROM entities_history WHERE instance = $1",
            &[&id.as_bytes()],
        )
        .await
        .map_err(failed)?;
        let deleted = tx
            .execute(
                "DELETE FROM entities_instances WHERE id = $1",
                &[&id.as_bytes()],
            )
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(deleted > 0)
    }

    /// Deletes up to `query.page_size` ended instances that `query` selects, oldest first,
    /// with their histories, in one statement; returns how many.
    pub(crate) async fn purge_instances(&self, query: &InstanceQuery) -> Result<u64, StoreError> {
        self.refuse_if_closed()?;
        let conn = self.connection().await?;
        let purged = conn
            .query(
                "WITH doomed AS ( \
                   SELECT id FROM entities_instances WHERE status <> 'Running' \
                     AND ($1::text IS NULL OR name = $1) \
                     AND ($2::text IS NULL OR status = $2) \
                     AND ($3::bigint IS NULL OR created >= $3) \
                     AND ($4::bigint IS NULL OR created < $4) \
                     AND ($5::bigint IS NULL OR updated < $5) \
                     AND ($7::bool IS NULL OR (held IS NOT NULL) = $7) \
                   ORDER BY created, id LIMIT $6 FOR UPDATE), \
                 history AS ( \
                   DELETE FROM entities_history WHERE instance IN (SELECT id FROM doomed)) \
                 DELETE FROM entities_instances WHERE id IN (SELECT id FROM doomed) RETURNING id",
                &[
                    &query.name,
                    &query.status.map(rows::status_text),
                    &query.created_from.map(int),
                    &query.created_to.map(int),
                    &query.ended_before.map(int),
                    &(query.page_size.max(1) as i64),
                    &query.held,
                ],
            )
            .await
            .map_err(|e| pg_error("cannot purge instances", e))?;
        Ok(purged.len() as u64)
    }

    /// A page of instances in creation order, ties broken by id; the continuation is the
    /// `[created, id]` of the page's last instance.
    pub(crate) async fn query_instances(
        &self,
        query: &InstanceQuery,
    ) -> Result<InstanceRecordPage, StoreError> {
        let (after_created, after_id) = match &query.continuation {
            Some(token) => serde_json::from_str::<(i64, String)>(token).map_err(|e| {
                StoreError::with_source(format!("invalid continuation token `{token}`"), e)
            })?,
            None => (i64::MIN, String::new()),
        };
        let first_page = query.continuation.is_none();
        let page_size = query.page_size.max(1);
        let conn = self.connection().await?;
        let found = conn
            .query(
                &format!(
                    "SELECT {INSTANCE_COLUMNS} FROM entities_instances \
                     WHERE ($1 OR (created, id) > ($2, $3)) \
                       AND ($4::text IS NULL OR name = $4) \
                       AND ($5::text IS NULL OR status = $5) \
                       AND ($6::bigint IS NULL OR created >= $6) \
                       AND ($7::bigint IS NULL OR created < $7) \
                       AND ($9::bigint IS NULL OR (status <> 'Running' AND updated < $9)) \
                       AND ($10::bool IS NULL OR (held IS NOT NULL) = $10) \
                     ORDER BY created, id LIMIT $8"
                ),
                &[
                    &first_page,
                    &after_created,
                    &after_id.as_bytes(),
                    &query.name,
                    &query.status.map(rows::status_text),
                    &query.created_from.map(int),
                    &query.created_to.map(int),
                    &(page_size as i64 + 1),
                    &query.ended_before.map(int),
                    &query.held,
                ],
            )
            .await
            .map_err(read_failed)?;
        let mut instances = found
            .iter()
            .map(rows::instance)
            .collect::<Result<Vec<_>, _>>()?;
        let continuation = if instances.len() > page_size {
            instances.truncate(page_size);
            let last = instances.last().expect("page is not empty");
            Some(serde_json::json!([last.created, last.id]).to_string())
        } else {
            None
        };
        Ok(InstanceRecordPage {
            instances,
            continuation,
        })
    }

    /// The locked entities with their lock holders, by name then key.
    pub(crate) async fn locked_entities(&self) -> Result<Vec<LockRecord>, StoreError> {
        let conn = self.connection().await?;
        let found = conn
            .query(
                "SELECT name, key, lock_owner FROM entities_entities \
                 WHERE lock_owner IS NOT NULL ORDER BY name, key",
                &[],
            )
            .await
            .map_err(read_failed)?;
        let mut locks = Vec::with_capacity(found.len());
        for row in &found {
            locks.push(LockRecord {
                id: rows::entity_id(row)?,
                owner: rows::text(row.get::<_, &[u8]>(2)),
            });
        }
        Ok(locks)
    }

    /// How many entities of each name have a state, by name.
    pub(crate) async fn count_entities(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = self.connection().await?;
        let found = conn
            .query(
                "SELECT name, count(*) FROM entities_entities WHERE state IS NOT NULL \
                 GROUP BY name ORDER BY name",
                &[],
            )
            .await
            .map_err(read_failed)?;
        Ok(found
            .iter()
            .map(|row| {
                let count: i64 = row.get(1);
                (row.get::<_, String>(0), count.max(0) as u64)
            })
            .collect())
    }

    /// The counts of the metrics.
    pub(crate) async fn stats(&self) -> Result<StoreStats, StoreError> {
        let conn = self.connection().await?;
        let by_status = conn
            .query(
                "SELECT status, count(*) FROM entities_instances GROUP BY status",
                &[],
            )
            .await
            .map_err(read_failed)?;
        let counts = conn
            .query_one(
                "SELECT (SELECT count(*) FROM entities_entities WHERE lock_owner IS NOT NULL), \
                        (SELECT count(*) FROM entities_messages WHERE deliver_at IS NOT NULL), \
                        (SELECT count(*) FROM entities_messages), \
                        (SELECT count(*) FROM entities_instances WHERE held IS NOT NULL)",
                &[],
            )
            .await
            .map_err(read_failed)?;
        Ok(StoreStats {
            instances_by_status: by_status
                .iter()
                .map(|row| {
                    (
                        rows::parse_status(row.get::<_, &str>(0)),
                        row.get::<_, i64>(1) as u64,
                    )
                })
                .collect(),
            locked_entities: counts.get::<_, i64>(0) as u64,
            scheduled_messages: counts.get::<_, i64>(1) as u64,
            messages: counts.get::<_, i64>(2) as u64,
            instances_held: counts.get::<_, i64>(3) as u64,
        })
    }

    pub(crate) async fn running_instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let conn = self.connection().await?;
        let found = conn
            .query(
                &format!(
                    "SELECT {INSTANCE_COLUMNS} FROM entities_instances WHERE status = 'Running'"
                ),
                &[],
            )
            .await
            .map_err(read_failed)?;
        found.iter().map(rows::instance).collect()
    }
}
