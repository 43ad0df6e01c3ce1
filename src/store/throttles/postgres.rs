//! Sign-in and reminder throttles in PostgreSQL, as parts of the statement
//! that needs them. The first versions called the PL/pgSQL functions of the
//! `round_trips` migration; under sign-in load each of their inner
//! statements went through SPI and its own executor start, about a third of
//! PostgreSQL's CPU per sign-in. Here a sign-in's count and its relief are
//! plain common table expressions in the one statement each round trip
//! sends. (Migration `drop_unused_functions` removed the functions once no
//! released version called them.)

use std::{sync::LazyLock, time::Duration};

use async_trait::async_trait;
use sqlx::{Row, postgres::PgRow};

use crate::store::postgres::PgStore;
use crate::store::{Quota, Result, ThrottleRule, ThrottleStore};

/// The keys sorted and distinct (one lock order for every caller: no
/// deadlock between two attempts), and their rules, column by column.
pub(in crate::store) struct ThrottleArgs<'a> {
    keys: Vec<&'a [u8]>,
    free: Vec<i32>,
    max_wait: Vec<f64>,
    window: Vec<f64>,
}

impl<'a> ThrottleArgs<'a> {
    pub(in crate::store) fn of(keys: &'a [(Vec<u8>, ThrottleRule)]) -> Self {
        let mut sorted: Vec<&(Vec<u8>, ThrottleRule)> = keys.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        sorted.dedup_by(|a, b| a.0 == b.0);
        Self {
            keys: sorted.iter().map(|(k, _)| k.as_slice()).collect(),
            free: sorted.iter().map(|(_, r)| r.free).collect(),
            max_wait: sorted.iter().map(|(_, r)| r.max_wait.as_secs_f64()).collect(),
            window: sorted.iter().map(|(_, r)| r.window.as_secs_f64()).collect(),
        }
    }

    /// Binds them as `$1` to `$4`, the parameters of [`COUNT`].
    pub(in crate::store) fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>
    where
        'a: 'q,
    {
        q.bind(self.keys).bind(self.free).bind(self.max_wait).bind(self.window)
    }
}

/// Two common table expressions over `$1` to `$4` ([`ThrottleArgs`]) that
/// count one attempt against each key unless one of them is under a wait:
/// `waiting` (one row: the longest wait in seconds, NULL when there is none)
/// and `counted` (a row per key counted). Past `free` attempts the wait
/// doubles with each (1 s, 2 s, 4 s, ... up to `max_wait`); attempts older
/// than `win` seconds are forgotten.
///
/// The waits are read without a lock. The count then judges each row it has
/// locked, as last committed, and skips one whose wait began since that read:
/// parallel attempts cannot slip past it. (Only in that race is a refused
/// attempt counted, against its other keys: it was made.) A row that exists
/// takes its key's rule by the key's place in `$1`. Rows are made and locked
/// in key order.
pub(in crate::store) static COUNT: LazyLock<String> = LazyLock::new(|| {
    let at = "array_position($1::bytea[], t.key)";
    let count = format!(
        "CASE WHEN t.last_failure < now() - make_interval(secs => ($4::float8[])[{at}]) THEN 1 ELSE t.failures + 1 END"
    );
    format!(
        "waiting AS (
            SELECT max(extract(epoch FROM blocked_until - now()))::float8 AS wait
            FROM throttles WHERE key = ANY ($1::bytea[]) AND blocked_until > now()
        ),
        counted AS (
            INSERT INTO throttles AS t (key, failures, last_failure, blocked_until)
            SELECT r.key, 1, now(), {}
            FROM unnest($1::bytea[], $2::int4[], $3::float8[]) AS r(key, free, max_wait)
            WHERE (SELECT wait FROM waiting) IS NULL
            ORDER BY r.key
            ON CONFLICT (key) DO UPDATE SET failures = {count}, last_failure = now(), blocked_until = {}
            WHERE t.blocked_until IS NULL OR t.blocked_until <= now()
            RETURNING 1
        )",
        wait_from("1", "r.free", "r.max_wait"),
        wait_from(&count, &format!("($2::int4[])[{at}]"), &format!("($3::float8[])[{at}]")),
    )
});

/// When the wait after `n` attempts ends (NULL: no wait).
fn wait_from(n: &str, free: &str, max_wait: &str) -> String {
    format!(
        "CASE WHEN {n} >= {free} THEN now() + make_interval(secs => LEAST({max_wait}, power(2, LEAST({n} - {free}, 30)))) END"
    )
}

/// The select-list items that report [`COUNT`]: `wait` (seconds, NULL when
/// there is none) and `raced` (fewer keys counted than given: a wait began
/// after the read, see [`counted_wait`]).
pub(in crate::store) const OUTCOME: &str =
    "(SELECT wait FROM waiting) AS wait, (SELECT count(*) FROM counted) < cardinality($1::bytea[]) AS raced";

/// The wait, if the attempt must wait, from a row that selected [`OUTCOME`].
pub(in crate::store) fn counted_wait(row: &PgRow) -> Result<Option<Duration>> {
    if let Some(wait) = row.try_get::<Option<f64>, _>("wait")? {
        return Ok(Some(Duration::from_secs_f64(wait.max(0.0))));
    }
    // A wait that began after the read: this statement cannot see its
    // length, so it answers with the shortest there is.
    Ok(row.try_get::<bool, _>("raced")?.then_some(Duration::from_secs(1)))
}

/// A common table expression over `$6` (`clear`, may be NULL) and `$7`
/// (`forgive`, may be NULL) for a successful sign-in: `clear`'s count goes to
/// zero (the row stays, for the username's next attempt to update in place;
/// the sweep removes it after a day) and this attempt is taken off
/// `forgive`'s. Both rows are locked in key order before either changes, as
/// [`COUNT`] locks them: a success racing another attempt of the same name
/// from the same address must not take them the other way round.
pub(in crate::store) const RELIEF: &str = "
    relief AS (
        UPDATE throttles AS t SET
            failures = CASE WHEN t.key = $6 THEN 0 ELSE GREATEST(t.failures - 1, 0) END,
            blocked_until = CASE WHEN t.key = $6 THEN NULL ELSE t.blocked_until END
        FROM (SELECT key FROM throttles WHERE key IN ($6, $7) ORDER BY key FOR UPDATE) AS l
        WHERE t.key = l.key
    )";

#[async_trait]
impl ThrottleStore for PgStore {
    async fn throttle_attempt(&self, keys: &[(Vec<u8>, ThrottleRule)]) -> Result<Option<Duration>> {
        static SQL: LazyLock<String> = LazyLock::new(|| format!("WITH {} SELECT {}", *COUNT, OUTCOME));
        let row = ThrottleArgs::of(keys).bind(sqlx::query(&SQL)).fetch_one(&self.pool).await?;
        counted_wait(&row)
    }

    async fn throttle_relieved(&self, clear: &[u8], forgive: Option<&[u8]>) -> Result<()> {
        // The sign-in's relief, numbered for a statement of its own.
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("WITH {} SELECT 1", RELIEF.replace("$6", "$1").replace("$7", "$2")));
        sqlx::query(&SQL).bind(clear).bind(forgive).execute(&self.pool).await?;
        Ok(())
    }

    async fn throttle_failed(&self, keys: &[(Vec<u8>, ThrottleRule)]) -> Result<()> {
        for (key, rule) in keys {
            sqlx::query(
                "UPDATE throttles SET blocked_until =
                     now() + make_interval(secs => LEAST($3, power(2, LEAST(failures - $2, 30))))
                 WHERE key = $1 AND failures >= $2",
            )
            .bind(key)
            .bind(rule.free)
            .bind(rule.max_wait.as_secs_f64())
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    async fn quota_attempt(&self, key: &[u8], quota: Quota) -> Result<Option<Duration>> {
        // A quota's row: `failures` counts the window's attempts and
        // `last_failure` is when the window began. The row is locked by the
        // upsert, so parallel attempts are counted one after another; the
        // wait is read from the statement's snapshot, as the row was before.
        let row = sqlx::query(
            "WITH counted AS (
                 INSERT INTO throttles AS t (key, failures, last_failure) VALUES ($1, 1, now())
                 ON CONFLICT (key) DO UPDATE SET
                     failures = CASE WHEN t.last_failure <= now() - make_interval(secs => $3) THEN 1
                                     ELSE t.failures + 1 END,
                     last_failure = CASE WHEN t.last_failure <= now() - make_interval(secs => $3) THEN now()
                                         ELSE t.last_failure END
                 WHERE t.last_failure <= now() - make_interval(secs => $3) OR t.failures < $2
                 RETURNING 1
             )
             SELECT EXISTS (SELECT 1 FROM counted) AS counted,
                    (SELECT extract(epoch FROM last_failure + make_interval(secs => $3) - now())::float8
                     FROM throttles WHERE key = $1) AS wait",
        )
        .bind(key)
        .bind(i32::try_from(quota.per_window).unwrap_or(i32::MAX))
        .bind(quota.window.as_secs_f64())
        .fetch_one(&self.pool)
        .await?;
        if row.try_get::<bool, _>("counted")? {
            return Ok(None);
        }
        // A window begun by another attempt since the snapshot has no wait
        // this statement can see: the shortest there is, then.
        let wait = row.try_get::<Option<f64>, _>("wait")?.unwrap_or(0.0);
        Ok(Some(Duration::from_secs_f64(wait.max(1.0))))
    }
}
