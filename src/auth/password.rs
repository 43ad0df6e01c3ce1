//! argon2id hashing on a pool of its own: a few threads (one per core by
//! default) that run at the lowest CPU priority, behind a semaphore so that a
//! storm of sign-ins queues instead of starving every other request. The
//! async reactor, the database and every read keep their latency while
//! hashes saturate the cores; with nothing else to do, hashes get it all.
//!
//! The service's hasher is bounded ([`PasswordHasher::bounded`]): past a
//! number of waiting hashes, or when the wait would be too long at the
//! current speed of a hash, a call is refused at once
//! ([`HashError::Overloaded`]) instead of queueing behind a flood it cannot
//! get through in time. A client told to come back later does better than
//! one that times out after holding a place in the queue.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, AtomicUsize, Ordering},
    mpsc,
};
use std::time::{Duration, Instant};

use std::cell::RefCell;

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, SaltString},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{OnceCell, Semaphore, oneshot};

use super::hash_memory::HashMemory;

/// OWASP's minimum for argon2id: 19 MiB, two passes, one lane.
pub const MEMORY_KIB: u32 = 19 * 1024;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;

/// The nice value of hashing threads: the lowest priority there is.
const HASH_NICENESS: i32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password hasher closed")]
    Closed,
    /// Too many hashes waiting: this one was not queued.
    #[error("the service is overloaded; try again in {} s", .retry_after.as_secs())]
    Overloaded { retry_after: Duration },
}

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads; they end when the last handle is dropped.
struct HashPool {
    jobs: Mutex<mpsc::Sender<Job>>,
    /// How long a hash takes lately, in nanoseconds (a moving average of
    /// the jobs' own times, waits excluded): what a place in the queue costs.
    hash_nanos: Arc<AtomicU64>,
}

impl HashPool {
    fn start(threads: usize) -> Result<Self, HashError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("usersvc-hash-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv_timeout(IDLE),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            // Nothing to hash for a while: give the memory
                            // back (freed after the lock, so another idle
                            // thread takes its turn to wait and free).
                            Err(mpsc::RecvTimeoutError::Timeout) => release_blocks(),
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                })
                .map_err(|e| HashError::Hash(format!("starting a hashing thread: {e}")))?;
        }
        Ok(Self { jobs: Mutex::new(tx), hash_nanos: Arc::new(AtomicU64::new(PRIOR_HASH_TIME.as_nanos() as u64)) })
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, HashError> {
        let (tx, rx) = oneshot::channel();
        let hash_nanos = self.hash_nanos.clone();
        let job: Job = Box::new(move || {
            let start = Instant::now();
            let out = f();
            // An eighth of each new time: a few hashes follow a change of
            // speed (the cores taken by something else), one odd hash does
            // not. Updates racing on another thread may be lost; either is
            // as good an estimate.
            let took = start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            let was = hash_nanos.load(Ordering::Relaxed);
            hash_nanos.store(was - was / 8 + took / 8, Ordering::Relaxed);
            let _ = tx.send(out);
        });
        self.jobs.lock().map_err(|_| HashError::Closed)?.send(job).map_err(|_| HashError::Closed)?;
        rx.await.map_err(|_| HashError::Closed)
    }

    /// What a hash takes lately.
    fn hash_time(&self) -> Duration {
        Duration::from_nanos(self.hash_nanos.load(Ordering::Relaxed))
    }
}

/// What a hash is taken to cost before one is timed: about what one
/// takes on one core of a current server (15 to 20 ms on the 2-core machine
/// of bench/results.md).
const PRIOR_HASH_TIME: Duration = Duration::from_millis(20);

/// Makes the calling thread (only it: on Linux, niceness is per thread) the
/// last to get a core when others want one.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only reads its integer arguments; the id is
        // this thread's own.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, HASH_NICENESS) };
        if rc != 0 {
            tracing::warn!("hashing threads run at normal priority (setpriority failed)");
        }
    }
}

/// How much waiting the service's hasher takes on.
#[derive(Debug, Clone, Copy)]
pub struct QueueBound {
    /// Hashes that may wait for a hashing thread, beyond those running.
    pub waiting: usize,
    /// Longest wait for a thread a call is let in for, reckoned from the
    /// recent time of a hash: when hashes slow down (the cores busy with
    /// other work), fewer may wait.
    pub max_wait: Duration,
}

impl QueueBound {
    /// Waiting hashes per hashing thread by default. One hash takes 15 to
    /// 20 ms on a core (bench/results.md: 105 hashes/s on 2 threads; 69/s
    /// on one), so 32 waiting per thread is 0.5 to 0.65 s of waiting: within
    /// the 2 s a sign-in may wait even when hashes run three times slower,
    /// as they do at the lowest priority on cores that are busy with
    /// something else. (Where they are slower still, `max_wait` lets
    /// fewer in.)
    pub const WAITING_PER_THREAD: usize = 32;
    /// The default of `max_wait`.
    pub const MAX_WAIT: Duration = Duration::from_secs(2);
}

#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    pool: Arc<HashPool>,
    params: Params,
    threads: usize,
    /// None: every call waits its turn (the import paces itself).
    bound: Option<QueueBound>,
    /// Calls between admission and their hash's end: running and waiting.
    inside: Arc<AtomicUsize>,
    /// Verified against when a username is unknown, so that both failures
    /// cost one verification. Made on first need, not at start.
    dummy_hash: Arc<OnceCell<Arc<str>>>,
}

/// A call's place among those [`PasswordHasher::inside`], given up when
/// dropped.
struct Inside(Arc<AtomicUsize>);

impl Drop for Inside {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PasswordHasher {
    /// `concurrency` hashes run at once at most, each on its own thread (the
    /// number of cores is right: each hash keeps one core busy), and as many
    /// more wait ready in the pool's queue. Every other call waits its turn,
    /// however many there are.
    pub fn new(concurrency: usize) -> Result<Self, HashError> {
        let params = params()?;
        let threads = concurrency.max(1);
        Ok(Self {
            // One job waits in the pool's queue behind each running one, so
            // a thread that finishes takes the next at once instead of
            // idling while the next caller is woken to hand it over.
            permits: Arc::new(Semaphore::new(threads * 2)),
            pool: Arc::new(HashPool::start(threads)?),
            params,
            threads,
            bound: None,
            inside: Arc::default(),
            dummy_hash: Arc::default(),
        })
    }

    /// The same, refusing calls past `bound` with [`HashError::Overloaded`].
    pub fn bounded(concurrency: usize, bound: QueueBound) -> Result<Self, HashError> {
        Ok(Self { bound: Some(bound), ..Self::new(concurrency)? })
    }

    /// Hashing threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    pub async fn hash(&self, password: SecretString) -> Result<String, HashError> {
        self.reserve()?.hash(password).await
    }

    /// A place for one hash or verification, taken before the work that
    /// leads to it (a sign-in's throttle count, a sign-up's quota): a call
    /// refused for want of one has changed nothing.
    pub fn reserve(&self) -> Result<Reserved<'_>, HashError> {
        Ok(Reserved { hasher: self, _inside: self.admit()? })
    }

    /// Lets a call in, or refuses it at once when it would wait past the
    /// bound: by count, or by the time the hashes ahead of it take now.
    fn admit(&self) -> Result<Inside, HashError> {
        let ahead = self.inside.fetch_add(1, Ordering::AcqRel);
        let inside = Inside(self.inside.clone());
        let Some(bound) = self.bound else { return Ok(inside) };
        // The calls that would wait for a thread, this one included; each
        // thread takes the next of them every `hash_time`.
        let waiting = (ahead + 1).saturating_sub(self.threads);
        let wait = self.pool.hash_time().mul_f64(waiting as f64 / self.threads as f64);
        if waiting > bound.waiting {
            return Err(self.shed("queue_full"));
        }
        if wait > bound.max_wait {
            return Err(self.shed("too_slow"));
        }
        Ok(inside)
    }

    /// A refusal: counted by why, and told when the hashes now inside will
    /// be done (whole seconds, rounded up, at least 1).
    fn shed(&self, why: &'static str) -> HashError {
        metrics::counter!("usersvc_password_hash_shed_total", "reason" => why).increment(1);
        let inside = self.inside.load(Ordering::Acquire);
        let drained = self.pool.hash_time().mul_f64(inside as f64 / self.threads as f64);
        let secs = drained.as_secs() + u64::from(drained.subsec_nanos() > 0);
        HashError::Overloaded { retry_after: Duration::from_secs(secs.max(1)) }
    }

    /// A place in the hash pool; the queue and the wait are measured. A
    /// bounded hasher gives up on a wait past `max_wait`: hashes that slowed
    /// down after a call was let in (the cores taken by something else)
    /// must not make it wait longer than any call may.
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, HashError> {
        let queued = metrics::gauge!("usersvc_password_hash_queue_depth");
        queued.increment(1.0);
        let start = Instant::now();
        let acquire = self.permits.acquire();
        let permit = match self.bound {
            Some(bound) => tokio::time::timeout(bound.max_wait, acquire).await.ok(),
            None => Some(acquire.await),
        };
        queued.decrement(1.0);
        metrics::histogram!("usersvc_password_hash_wait_seconds").record(start.elapsed().as_secs_f64());
        match permit {
            Some(permit) => permit.map_err(|_| HashError::Closed),
            None => Err(self.shed("waited_too_long")),
        }
    }

    /// Checks a password against a PHC string, or against the dummy hash
    /// when there is none (the answer is then always false).
    pub async fn verify(&self, password: SecretString, phc: Option<String>) -> Result<bool, HashError> {
        self.reserve()?.verify(password, phc).await
    }

    /// A hash by a call that has its place (in the pool's own order).
    async fn hash_in_place(&self, password: SecretString) -> Result<String, HashError> {
        let _permit = self.permit().await?;
        let params = self.params.clone();
        self.pool.run(move || hash_blocking(&params, password.expose_secret())).await?
    }

    /// Made by the first verification that needs it, in that call's place.
    async fn dummy(&self) -> Result<Arc<str>, HashError> {
        self.dummy_hash
            .get_or_try_init(|| async {
                let dummy = crate::auth::secret::generate();
                self.hash_in_place(dummy).await.map(Arc::from)
            })
            .await
            .cloned()
    }
}

/// A place among the hasher's calls ([`PasswordHasher::reserve`]), used
/// by one hash or verification.
pub struct Reserved<'a> {
    hasher: &'a PasswordHasher,
    _inside: Inside,
}

impl Reserved<'_> {
    pub async fn hash(self, password: SecretString) -> Result<String, HashError> {
        self.hasher.hash_in_place(password).await
    }

    /// Checks a password against a PHC string, or against the dummy hash
    /// when there is none (the answer is then always false).
    pub async fn verify(self, password: SecretString, phc: Option<String>) -> Result<bool, HashError> {
        let known = phc.is_some();
        let phc = match phc {
            Some(phc) => phc,
            None => self.hasher.dummy().await?.to_string(),
        };
        let _permit = self.hasher.permit().await?;
        let ok = self.hasher.pool.run(move || verify_blocking(&phc, password.expose_secret())).await?;
        Ok(ok && known)
    }
}

/// One hash at the service's parameters on the calling thread, the way the
/// hash pool makes one (its memory kept for the next): what the load
/// tool's argon2 baseline repeats, so the baseline is the service's own
/// hashing and not a slower way to the same work.
pub fn hash_here(password: &str) -> Result<String, HashError> {
    hash_blocking(&params()?, password)
}

/// The argon2id parameters new hashes are made with.
fn params() -> Result<Params, HashError> {
    Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).map_err(|e| HashError::Hash(e.to_string()))
}

/// Memory blocks above this are refused (a stored hash asking for more is
/// none of ours): 256 MiB.
pub(super) const MAX_BLOCKS: usize = 256 * 1024;

thread_local! {
    /// Each hashing thread's argon2 memory, reused from hash to hash. Freshly
    /// mapped memory for every hash cost a third of the hash again in page
    /// faults and zeroing. On huge pages where it can be (`hash_memory`). It
    /// goes back to the system after `IDLE` without a hash, so a process at
    /// rest holds none.
    static BLOCKS: RefCell<Option<HashMemory>> = const { RefCell::new(None) };
}

/// How long a hashing thread keeps its memory with nothing to hash.
const IDLE: Duration = Duration::from_secs(1);

fn release_blocks() {
    BLOCKS.with(|blocks| {
        if let Ok(mut blocks) = blocks.try_borrow_mut() {
            *blocks = None;
        }
    });
}

fn with_blocks<T>(params: &Params, f: impl FnOnce(&mut [Block]) -> T) -> Option<T> {
    let n = params.block_count();
    if n > MAX_BLOCKS {
        return None;
    }
    BLOCKS.with(|blocks| {
        let mut memory = blocks.borrow_mut();
        if memory.as_ref().is_none_or(|m| m.len() < n) {
            // The smaller area goes before the larger one is mapped.
            *memory = None;
            *memory = Some(HashMemory::new(n));
        }
        memory.as_mut().map(|m| f(m.blocks(n)))
    })
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, HashError> {
    let err = |e: argon2::password_hash::Error| HashError::Hash(e.to_string());
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_buf).map_err(err)?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    with_blocks(params, |blocks| {
        argon.hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, blocks)
    })
    .ok_or_else(|| HashError::Hash("memory cost too high".into()))?
    .map_err(|e| HashError::Hash(e.to_string()))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(err)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(err)?),
    };
    Ok(phc.to_string())
}

/// Whether a password matches a stored hash: argon2 here, with the
/// thread's reused memory; the other schemes an imported user may carry
/// through their crates (`schemes`). Each comparison is constant-time.
fn verify_blocking(phc: &str, password: &str) -> bool {
    if !phc.starts_with("$argon2") {
        return super::schemes::verify_other(phc, password);
    }
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(parsed.algorithm), Params::try_from(&parsed)) else {
        return false;
    };
    let Ok(version) = parsed.version.map_or(Ok(Version::V0x13), Version::try_from) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let argon = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    let hashed = with_blocks(&params, |blocks| {
        argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
    });
    matches!(hashed, Some(Ok(()))) && Output::new(&out).is_ok_and(|o| o == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_use_owasp_parameters() {
        let hasher = PasswordHasher::new(2).unwrap();
        let phc = hasher.hash(SecretString::from("correct horse")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(hasher.verify(SecretString::from("correct horse"), Some(phc.clone())).await.unwrap());
        assert!(!hasher.verify(SecretString::from("wrong horse"), Some(phc)).await.unwrap());
        assert!(!hasher.verify(SecretString::from("correct horse"), None).await.unwrap());
    }

    #[tokio::test]
    async fn hashes_of_the_argon2_crate_and_ours_verify_each_other() {
        use argon2::{PasswordHasher as _, PasswordVerifier as _};
        let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).unwrap();
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        let hasher = PasswordHasher::new(1).unwrap();
        assert!(hasher.verify(SecretString::from("correct horse"), Some(theirs.clone())).await.unwrap());
        assert!(!hasher.verify(SecretString::from("correct horsf"), Some(theirs)).await.unwrap());
        let ours = hasher.hash(SecretString::from("correct horse")).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        assert!(!verify_blocking("$argon2id$v=19$m=999999999,t=2,p=1$c2FsdHNhbHQ$aGFzaA", "x"), "absurd cost refused");
        assert!(!verify_blocking("not a hash", "x"));
    }

    /// Runs `n` hashes at once; returns how many were made and the
    /// Retry-After of each refused one.
    async fn flood(hasher: &PasswordHasher, n: usize) -> (usize, Vec<Duration>) {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..n {
            let hasher = hasher.clone();
            calls.spawn(async move { hasher.hash(SecretString::from("correct horse")).await });
        }
        let mut made = 0;
        let mut refused = Vec::new();
        while let Some(r) = calls.join_next().await {
            match r.unwrap() {
                Ok(_) => made += 1,
                Err(HashError::Overloaded { retry_after }) => refused.push(retry_after),
                Err(e) => panic!("{e}"),
            }
        }
        (made, refused)
    }

    #[tokio::test]
    async fn past_the_bound_calls_are_refused_at_once() {
        let bound = QueueBound { waiting: 2, max_wait: Duration::from_secs(60) };
        let hasher = PasswordHasher::bounded(1, bound).unwrap();
        // One running and two waiting are let in, whatever the time.
        let (made, refused) = flood(&hasher, 10).await;
        assert_eq!((made, refused.len()), (3, 7));
        assert!(refused.iter().all(|r| *r >= Duration::from_secs(1)), "{refused:?}");
        // Once they are done, the next ones are let in again.
        assert_eq!(flood(&hasher, 3).await, (3, vec![]));
        // Without a bound, everyone waits their turn.
        assert_eq!(flood(&PasswordHasher::new(1).unwrap(), 10).await, (10, vec![]));
    }

    #[tokio::test]
    async fn a_call_that_waits_past_max_wait_gives_up() {
        // Hashes taken to cost 1 ms: all 16 are let in at once (15 ms of
        // waiting at most, by that reckoning). A hash takes longer than that
        // (at least 5 ms: 38 MiB of memory passes), so those that wait past
        // 70 ms for the thread give up then.
        let bound = QueueBound { waiting: 100, max_wait: Duration::from_millis(70) };
        let hasher = PasswordHasher::bounded(1, bound).unwrap();
        hasher.pool.hash_nanos.store(1_000_000, Ordering::Relaxed);
        let (made, refused) = flood(&hasher, 16).await;
        assert!(made >= 2 && !refused.is_empty(), "{made} made, {refused:?}");
        assert_eq!(made + refused.len(), 16);
    }

    #[tokio::test]
    async fn a_wait_longer_than_max_wait_is_refused() {
        // A hash takes milliseconds: no wait behind one is within 1 µs.
        let bound = QueueBound { waiting: 100, max_wait: Duration::from_micros(1) };
        let hasher = PasswordHasher::bounded(2, bound).unwrap();
        let (made, refused) = flood(&hasher, 6).await;
        assert_eq!((made, refused.len()), (2, 4), "only the two that run at once");
        // A verification takes a place like a hash.
        let phc = hasher.hash(SecretString::from("correct horse")).await.unwrap();
        let mut checks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (hasher, phc) = (hasher.clone(), phc.clone());
            checks.spawn(async move { hasher.verify(SecretString::from("correct horse"), Some(phc)).await });
        }
        let results: Vec<_> = checks.join_all().await;
        assert_eq!(results.iter().filter(|r| matches!(r, Ok(true))).count(), 2);
        assert_eq!(results.iter().filter(|r| matches!(r, Err(HashError::Overloaded { .. }))).count(), 2);
    }
}
