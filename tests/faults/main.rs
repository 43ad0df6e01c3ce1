//! Fault tests: the real binary while things break around it. PostgreSQL
//! stopped and started under load, `kill -9` mid-write, the mail server
//! away, slow and idle clients by the thousand, every database connection
//! busy, the auth cache's notification channel cut, a flood of sign-ins
//! from 400 addresses, the documented restore drill (a base backup and
//! archived WAL restored, the trail checked against an exported
//! checkpoint). Tests that stop or starve PostgreSQL run their own
//! private cluster (initdb + pg_ctl on a free port), never the shared
//! server; they skip, saying so, only where PostgreSQL's server binaries are
//! not installed.
//!
//! `cargo test` runs the short form (a few seconds of outage each);
//! `FAULTS_LONG=1 cargo test --test faults -- --nocapture` the long form
//! (15 s database outage, 60 s mail outage, more load and connections).
//! Each test prints a `FIGURES` line with what it measured.

mod channel;
mod cluster;
mod db_restart;
mod failover;
mod floods;
mod kill9;
mod mail_outage;
mod pool_exhaustion;
mod restore_drill;
mod server;
mod slow_clients;
#[allow(dead_code)]
#[path = "../api/smtp_sink.rs"]
mod smtp_sink;
