//! argon2id hashing on a pool of its own: a few threads (one per core by
//! default) that run at the lowest CPU priority, behind a semaphore so that a
//! storm of sign-ins queues instead of starving every other request. The
//! async reactor, the database and every read keep their latency while
//! hashes saturate the cores; with nothing else to do, hashes get it all.

use std::sync::{Arc, Mutex, mpsc};

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
}

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads; they end when the last handle is dropped.
struct HashPool {
    jobs: Mutex<mpsc::Sender<Job>>,
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
        Ok(Self { jobs: Mutex::new(tx) })
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, HashError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.lock().map_err(|_| HashError::Closed)?.send(job).map_err(|_| HashError::Closed)?;
        rx.await.map_err(|_| HashError::Closed)
    }
}

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

#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    pool: Arc<HashPool>,
    params: Params,
    /// Verified against when a username is unknown, so that both failures
    /// cost one verification. Made on first need, not at start.
    dummy_hash: Arc<OnceCell<Arc<str>>>,
}

impl PasswordHasher {
    /// `concurrency` hashes run at once at most, each on its own thread (the
    /// number of cores is right: each hash keeps one core busy), and as many
    /// more wait ready in the pool's queue.
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
            dummy_hash: Arc::default(),
        })
    }

    pub async fn hash(&self, password: SecretString) -> Result<String, HashError> {
        let _permit = self.permit().await?;
        let params = self.params.clone();
        self.pool.run(move || hash_blocking(&params, password.expose_secret())).await?
    }

    /// A place in the hash pool; the queue and the wait are measured.
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, HashError> {
        let queued = metrics::gauge!("usersvc_password_hash_queue_depth");
        queued.increment(1.0);
        let start = std::time::Instant::now();
        let permit = self.permits.acquire().await;
        queued.decrement(1.0);
        metrics::histogram!("usersvc_password_hash_wait_seconds").record(start.elapsed().as_secs_f64());
        permit.map_err(|_| HashError::Closed)
    }

    /// Checks a password against a PHC string, or against the dummy hash
    /// when there is none (the answer is then always false).
    pub async fn verify(&self, password: SecretString, phc: Option<String>) -> Result<bool, HashError> {
        let known = phc.is_some();
        let phc = match phc {
            Some(phc) => phc,
            None => self.dummy().await?.to_string(),
        };
        let _permit = self.permit().await?;
        let ok = self.pool.run(move || verify_blocking(&phc, password.expose_secret())).await?;
        Ok(ok && known)
    }

    async fn dummy(&self) -> Result<Arc<str>, HashError> {
        self.dummy_hash
            .get_or_try_init(|| async {
                let dummy = crate::auth::secret::generate();
                self.hash(dummy).await.map(Arc::from)
            })
            .await
            .cloned()
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
const IDLE: std::time::Duration = std::time::Duration::from_secs(1);

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
}
