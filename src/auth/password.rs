//! argon2id hashing off the async reactor, behind a semaphore so that a
//! storm of sign-ins queues instead of starving every other request.

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordVerifier, Version, password_hash::SaltString};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// OWASP's minimum for argon2id: 19 MiB, two passes, one lane.
pub const MEMORY_KIB: u32 = 19 * 1024;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("password hasher closed")]
    Closed,
}

#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    params: Params,
    /// Verified against when a username is unknown, so that both failures
    /// cost one verification.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    /// `concurrency` hashes run at once at most (the number of cores is right:
    /// each hash keeps one core busy).
    pub fn new(concurrency: usize) -> Result<Self, HashError> {
        let params =
            Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).map_err(|e| HashError::Hash(e.to_string()))?;
        let dummy = crate::auth::secret::generate();
        let dummy_hash = hash_blocking(&params, dummy.expose_secret())?;
        Ok(Self { permits: Arc::new(Semaphore::new(concurrency.max(1))), params, dummy_hash: dummy_hash.into() })
    }

    pub async fn hash(&self, password: SecretString) -> Result<String, HashError> {
        let _permit = self.permit().await?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || hash_blocking(&params, password.expose_secret())).await?
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
        let _permit = self.permit().await?;
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy_hash.to_string());
        let ok = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&phc) else {
                return false;
            };
            Argon2::default().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok()
        })
        .await?;
        Ok(ok && known)
    }
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    argon2::PasswordHasher::hash_password(&argon, password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Hash(e.to_string()))
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
}
