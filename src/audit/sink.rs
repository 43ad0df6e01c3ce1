//! The read trail's writer. A reply that discloses PII leaves only once the
//! record of that disclosure is committed: concurrent reads queue their
//! records, and whichever batch is forming when a writer is free takes them
//! all in one INSERT and one commit (group commit; nothing waits on a
//! timer). The queue is bounded: when the trail cannot keep up or cannot be
//! written, reads are refused (fail closed) instead of piling up in memory.
//!
//! `--read-trail async` trades that guarantee for latency: the reply goes
//! at once and the record follows, so a crash can lose the records still
//! queued. Off by default.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::store::Store;
use crate::store::trail::record::AuditRecord;

/// Records written by one statement at most.
const MAX_BATCH: usize = 4096;
/// Batches being written at once: while one commits, the next forms.
const WRITERS: usize = 2;
/// Records queued at most before reads are refused.
pub const QUEUE_CAPACITY: usize = 16_384;

/// When a read's reply may leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ReadTrail {
    /// After its record is committed.
    #[default]
    Durable,
    /// At once; the record is written after (lost if the process dies first).
    Async,
}

/// Why a record could not be kept.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum TrailError {
    #[error("the access trail's queue is full")]
    Full,
    #[error("the access trail cannot be written")]
    WriteFailed,
    #[error("the access trail writer has stopped")]
    Stopped,
}

impl TrailError {
    fn label(self) -> &'static str {
        match self {
            TrailError::Full => "queue_full",
            TrailError::WriteFailed => "write_failed",
            TrailError::Stopped => "stopped",
        }
    }
}

type Done = Option<oneshot::Sender<Result<(), TrailError>>>;

/// The handle the services queue records on.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<(AuditRecord, Done)>,
    mode: ReadTrail,
}

/// The background writer; [`AuditWriter::finish`] drains it.
pub struct AuditWriter {
    task: tokio::task::JoinHandle<()>,
}

impl AuditSink {
    pub fn start(store: Arc<dyn Store>, mode: ReadTrail) -> (Self, AuditWriter) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let task = tokio::spawn(run(store, rx, mode));
        (Self { tx, mode }, AuditWriter { task })
    }

    /// Keeps a record. Durable: returns once it is committed, or an error
    /// after which the reply must not be sent. Async: returns once queued.
    pub async fn record(&self, r: AuditRecord) -> Result<(), TrailError> {
        self.record_all(vec![r]).await
    }

    /// Keeps several records, queued together (they share batches).
    pub async fn record_all(&self, records: Vec<AuditRecord>) -> Result<(), TrailError> {
        let result = self.queue_and_wait(records).await;
        if let Err(e) = result {
            metrics::counter!("usersvc_trail_refused_total", "reason" => e.label()).increment(1);
            tracing::warn!(reason = e.label(), "a read was refused: its trail record could not be kept");
        }
        result
    }

    async fn queue_and_wait(&self, records: Vec<AuditRecord>) -> Result<(), TrailError> {
        let mut waits = Vec::new();
        for r in records {
            let done = match self.mode {
                ReadTrail::Durable => {
                    let (done, wait) = oneshot::channel();
                    waits.push(wait);
                    Some(done)
                }
                ReadTrail::Async => None,
            };
            self.tx.try_send((r, done)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => TrailError::Full,
                mpsc::error::TrySendError::Closed(_) => TrailError::Stopped,
            })?;
        }
        for wait in waits {
            wait.await.unwrap_or(Err(TrailError::Stopped))?;
        }
        Ok(())
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<(AuditRecord, Done)>, mode: ReadTrail) {
    let writers = Arc::new(Semaphore::new(WRITERS));
    let mut batches = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = writers.clone().acquire_owned().await else { break };
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let store = store.clone();
        batches.spawn(async move {
            write(&*store, batch, mode).await;
            drop(permit);
        });
        while batches.try_join_next().is_some() {}
    }
    while batches.join_next().await.is_some() {}
}

async fn write(store: &dyn Store, batch: Vec<(AuditRecord, Done)>, mode: ReadTrail) {
    let (records, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    metrics::histogram!("usersvc_trail_batch_records").record(records.len() as f64);
    let result = match mode {
        // A waiting read is answered 503 at once rather than held while the
        // database is away; its client may retry.
        ReadTrail::Durable => store.append_audit(&records).await.map_err(|e| {
            tracing::warn!(error = %e, records = records.len(), "read records not written; those reads are refused");
            TrailError::WriteFailed
        }),
        // Nobody waits: keep the batch and try again rather than drop it.
        ReadTrail::Async => {
            let mut wait = Duration::from_millis(50);
            while let Err(e) = store.append_audit(&records).await {
                tracing::warn!(error = %e, records = records.len(), "audit batch not written yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Ok(())
        }
    };
    for done in waiters.into_iter().flatten() {
        let _ = done.send(result);
    }
}

impl AuditWriter {
    /// Waits until every queued record is written (after the sinks are dropped).
    pub async fn finish(self) {
        let _ = self.task.await;
    }
}
