//! Mail: a sender inside `serve` drains the outbox over SMTP (or into a
//! folder when no SMTP server is configured). Messages are claimed for a
//! lease, so replicas never send one twice; temporary failures are retried
//! with backoff until the message is too old, then it is given up on.
//!
//! Before that it resolves the reminder and reset requests the anonymous
//! routes stored: who they match is looked up here, in the background, so
//! that the reply to the caller takes the same time either way; a match
//! becomes mail (within the per-recipient limit), no match nothing.

pub mod templates;

use std::{path::PathBuf, sync::Arc, time::Duration};

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
};
use tokio::sync::watch;

use crate::crypto::Keyring;
use crate::crypto::fields::{NOTICE_TO_FIELD, PROFILE_FIELD, RESET_TOKEN_FIELD, USERNAME_FIELD, VERIFY_MAIL_FIELD};
use crate::pb;
use crate::store::{
    AuditRecord, EMAIL_CHANGED, MFA_REMOVED, MailRequest, OutboxMessage, PASSWORD_CHANGED, RecipientLimit, Store,
    VERIFY_EMAIL, VERIFY_LIFETIME, VerifyMailPayload,
};
pub use templates::Templates;

/// The kinds of mail, as requests and the outbox name them.
pub const USERNAME_REMINDER: &str = "username_reminder";
pub const PASSWORD_RESET: &str = "password_reset";

/// The trail action of a request of this kind: the request's own record and
/// its resolution's (one per user matched) share it.
pub fn request_action(kind: &str) -> &'static str {
    if kind == PASSWORD_RESET { "user.password_reset_request" } else { "user.forgot_username" }
}

const SWEEP_EVERY: Duration = Duration::from_secs(300);
/// How long a claimed message is kept from other senders.
const LEASE: Duration = Duration::from_secs(120);
/// The longest wait between two attempts at a message: once the SMTP server
/// is back, what waited for it goes within this time (a reset link is only
/// good for half an hour).
const RETRY_CAP: Duration = Duration::from_secs(60);

/// The wait after a failed attempt: 2 s, 4 s, 8 s ... up to [`RETRY_CAP`].
fn retry_wait(attempts: i32) -> Duration {
    Duration::from_secs(1u64 << attempts.clamp(1, 16)).min(RETRY_CAP)
}

pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// Each message as an `.eml` file, for development.
    Dir(PathBuf),
}

impl Transport {
    /// `smtp://` (STARTTLS where offered), `smtp://...?tls=required`, or
    /// `smtps://`; none means the folder.
    pub fn new(smtp_url: Option<&str>, dir: PathBuf) -> anyhow::Result<Self> {
        match smtp_url {
            Some(url) => {
                let url = if url.starts_with("smtp://") && !url.contains("tls=") {
                    let sep = if url.contains('?') { '&' } else { '?' };
                    format!("{url}{sep}tls=opportunistic")
                } else {
                    url.to_owned()
                };
                let t = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)?
                    .timeout(Some(Duration::from_secs(20)))
                    .build();
                Ok(Transport::Smtp(t))
            }
            None => Ok(Transport::Dir(dir)),
        }
    }
}

pub struct Mailer {
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    pub transport: Transport,
    pub from: Mailbox,
    pub templates: Templates,
    /// Where reset links point: the gateway's public address.
    pub public_url: String,
    /// A message not sent by then is given up on.
    pub give_up_after: Duration,
    /// How long a reset link works, as the message says it.
    pub reset_minutes: u64,
    pub poll_every: Duration,
    /// Reminders and reset links to one address, at most.
    pub per_recipient: RecipientLimit,
}

enum Outcome {
    Sent,
    /// Worth trying again later.
    Retry,
    /// Will never go: no such user any more, no address, refused for good.
    Drop(&'static str),
}

impl Mailer {
    /// Sends until `stop` turns true. Between batches it also sweeps out
    /// expired sessions, tokens and throttle counts, now and then.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut last_sweep = std::time::Instant::now() - SWEEP_EVERY;
        loop {
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = std::time::Instant::now();
                match self.store.sweep().await {
                    Ok(n) if n > 0 => tracing::debug!(rows = n, "expired rows swept"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sweep failed"),
                }
                if let Err(e) = self.store.sweep_verifications().await {
                    tracing::warn!(error = %e, "sweep of verification links failed");
                }
            }
            if *stop.borrow() {
                return;
            }
            // A batch of each in turn: a flood of requests does not hold
            // back the mail already queued.
            let mut busy = false;
            match self.store.claim_mail_requests(16, LEASE).await {
                Ok(batch) => {
                    busy |= !batch.is_empty();
                    for r in batch {
                        self.resolve(r).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "mail requests not reachable"),
            }
            match self.store.claim_outbox(16, LEASE).await {
                Ok(batch) => {
                    busy |= !batch.is_empty();
                    for m in batch {
                        self.deliver(m).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "outbox not reachable"),
            }
            if busy {
                continue;
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(self.poll_every) => {}
            }
        }
    }

    /// Turns a request into mail, or nothing. Whether it matched anyone is
    /// neither logged nor answered: it would tell who is registered. A
    /// request that fails stays leased and is tried again, until too old.
    async fn resolve(&self, r: MailRequest) {
        let age = (chrono::Utc::now() - r.created_at).to_std().unwrap_or_default();
        if age >= self.give_up_after {
            tracing::warn!(request = %r.id, attempts = r.attempts, "mail request given up after retrying");
            if let Err(e) = self.store.drop_mail_request(r.id).await {
                tracing::warn!(request = %r.id, error = %e, "mail request not dropped");
            }
            return;
        }
        let mut audit = AuditRecord::new(request_action(&r.kind), Some(r.app_id));
        audit.request_id = r.request_id.clone();
        match self.store.resolve_mail_request(&r, self.per_recipient, &audit).await {
            Ok(done) => {
                if done.limited > 0 {
                    metrics::counter!("usersvc_mail_recipient_limited_total").increment(u64::from(done.limited));
                }
            }
            Err(e) => tracing::warn!(request = %r.id, attempts = r.attempts, error = %e, "mail request not resolved"),
        }
    }

    async fn deliver(&self, m: OutboxMessage) {
        let outcome = match self.compose(&m).await {
            Ok(Some(message)) => self.send(message).await,
            Ok(None) => Outcome::Drop("the user or their address is gone"),
            Err(e) => {
                tracing::warn!(outbox_id = %m.id, error = %e, "message could not be composed");
                Outcome::Retry
            }
        };
        let result = match outcome {
            Outcome::Sent => {
                tracing::info!(outbox_id = %m.id, kind = %m.kind, "mail sent");
                self.store.outbox_sent(m.id).await
            }
            Outcome::Drop(why) => {
                tracing::warn!(outbox_id = %m.id, why, "mail given up");
                self.store.outbox_give_up(m.id).await
            }
            Outcome::Retry => {
                let age = (chrono::Utc::now() - m.created_at).to_std().unwrap_or_default();
                if age >= self.give_up_after {
                    tracing::warn!(outbox_id = %m.id, attempts = m.attempts, "mail given up after retrying");
                    self.store.outbox_give_up(m.id).await
                } else {
                    let wait = retry_wait(m.attempts);
                    tracing::info!(outbox_id = %m.id, attempts = m.attempts, wait_s = wait.as_secs(), "mail will be retried");
                    self.store.outbox_retry(m.id, wait).await
                }
            }
        };
        if let Err(e) = result {
            // The lease runs out and the message is claimed again.
            tracing::warn!(outbox_id = %m.id, error = %e, "outbox not updated");
        }
    }

    /// The message for an outbox row, or None when it can never be sent.
    async fn compose(&self, m: &OutboxMessage) -> anyhow::Result<Option<Message>> {
        let Some(r) = self.store.mail_recipient(m.app_id, m.user_id).await? else {
            return Ok(None);
        };
        let username = self.keyring.open(m.app_id, m.user_id, USERNAME_FIELD, &r.username_ct).await?;
        let username = String::from_utf8(username)?;
        let mut verify = None;
        let to = if m.kind == VERIFY_EMAIL {
            // To the address it verifies, which the profile may no longer hold.
            let Some(ct) = &m.payload_ct else {
                return Ok(None);
            };
            let payload: VerifyMailPayload =
                serde_json::from_slice(&self.keyring.open(m.app_id, m.id, VERIFY_MAIL_FIELD, ct).await?)?;
            let to = payload.to.clone();
            verify = Some(payload);
            Some(to)
        } else if m.kind == PASSWORD_CHANGED || m.kind == EMAIL_CHANGED || m.kind == MFA_REMOVED {
            // To the address the user had when it changed: after an email
            // change it is no longer in the profile, and it is the owner's.
            let Some(ct) = &m.payload_ct else {
                return Ok(None);
            };
            Some(String::from_utf8(self.keyring.open(m.app_id, m.id, NOTICE_TO_FIELD, ct).await?)?)
        } else {
            let profile_pt = self.keyring.open(m.app_id, m.user_id, PROFILE_FIELD, &r.profile_ct).await?;
            let user: pb::User = serde_json::from_slice(&profile_pt)?;
            user.email.map(|e| e.primary)
        };
        let Some(to) = to.filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        let Ok(to) = to.parse::<lettre::Address>() else {
            return Ok(None);
        };
        let link;
        let verify_link;
        let minutes = self.reset_minutes.to_string();
        let hours = (VERIFY_LIFETIME.as_secs() / 3600).to_string();
        let mut values = vec![("app_name", r.app_name.as_str()), ("username", username.as_str())];
        if m.kind == "password_reset" {
            let Some(ct) = &m.payload_ct else {
                return Ok(None);
            };
            let token = self.keyring.open(m.app_id, m.id, RESET_TOKEN_FIELD, ct).await?;
            link = format!("{}/v2/reset/{}", self.public_url.trim_end_matches('/'), String::from_utf8(token)?);
            values.push(("reset_link", &link));
            values.push(("expires_minutes", &minutes));
        }
        if let Some(p) = &verify {
            // The link's digest, bound to the address, is stored as it goes
            // (a retry of this message stores the same one again: nothing).
            let expires = m.created_at + VERIFY_LIFETIME;
            let hash = crate::auth::secret::digest(&p.token);
            self.store.issue_verification(m.app_id, m.user_id, &hash, &p.email_bidx, expires).await?;
            verify_link = format!("{}/v2/verify/{}", self.public_url.trim_end_matches('/'), p.token);
            values.push(("verify_link", &verify_link));
            values.push(("expires_hours", &hours));
        }
        let rendered = self.templates.render(m.app_id, &m.kind, &values).await;
        let message = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(rendered.subject)
            .message_id(Some(format!("<{}@usersvc>", m.id)))
            .multipart(MultiPart::alternative_plain_html(rendered.text, rendered.html))?;
        Ok(Some(message))
    }

    async fn send(&self, message: Message) -> Outcome {
        match &self.transport {
            Transport::Smtp(smtp) => match smtp.send(message).await {
                Ok(_) => Outcome::Sent,
                Err(e) if e.is_permanent() => {
                    // The server's words may quote the address: log the class only.
                    tracing::warn!(status = ?e.status(), "SMTP refused a message for good");
                    Outcome::Drop("refused by the SMTP server")
                }
                Err(e) => {
                    tracing::warn!(status = ?e.status(), timeout = e.is_timeout(), "SMTP not reachable or busy");
                    Outcome::Retry
                }
            },
            Transport::Dir(dir) => {
                let name = format!("{}-{}.eml", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f"), uuid::Uuid::now_v7());
                let write = async {
                    tokio::fs::create_dir_all(dir).await?;
                    tokio::fs::write(dir.join(name), message.formatted()).await
                };
                match write.await {
                    Ok(()) => Outcome::Sent,
                    Err(e) => {
                        tracing::warn!(error = %e, "mail folder not writable");
                        Outcome::Retry
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_a_minute() {
        let waits: Vec<u64> = (1..=8).map(|a| retry_wait(a).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_wait(1000), RETRY_CAP);
    }
}
