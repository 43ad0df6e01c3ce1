//! Growth: an application seeded with N users through `import` (the
//! import's own rate measured, and PostgreSQL's COPY of the same rows as
//! its baseline), then what its users and supervisors feel at that size:
//! GET at 16 connections, sign-in, a 100-user page of ListUsers and a
//! search by email, with the server's peak resident size over it all.

use std::io::Read;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio_stream::StreamExt;
use usersvc::{admin::Admin, auth::password::PasswordHasher, import::Importer, import::formats::Format};

use crate::measure;
use crate::scenario::{BenchUser, PASSWORD, Scenario, Target, Via};

/// Seeded users as JSON lines, made as they are read.
struct Seed {
    next: u64,
    n: u64,
    run: String,
    hash: String,
    line: Vec<u8>,
    at: usize,
}

impl Read for Seed {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.line.len() {
            if self.next == self.n {
                return Ok(0);
            }
            let i = self.next;
            self.next += 1;
            let doc = json!({
                "username": seeded(i, &self.run), "passwordHash": self.hash,
                "email": {"primary": format!("g{i}-{}@example.com", self.run)},
                "name": {"firstName": "Bench", "lastName": format!("g{i}")},
            });
            self.line = format!("{doc}\n").into_bytes();
            self.at = 0;
        }
        let n = out.len().min(self.line.len() - self.at);
        out[..n].copy_from_slice(&self.line[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn seeded(i: u64, run: &str) -> String {
    format!("g{i}-{run}")
}

pub struct Growth<'a> {
    pub admin: &'a Admin,
    pub database_url: &'a str,
    pub target: Target,
    pub app_id: uuid::Uuid,
    pub users: u64,
    pub connections: usize,
    pub warmup: Duration,
    pub seconds: Duration,
    pub copy_baseline: bool,
    pub server_pid: Option<u32>,
}

impl Growth<'_> {
    pub async fn run(self) -> anyhow::Result<Value> {
        let hash = usersvc::auth::password::hash_here(PASSWORD)?;
        let seed = Seed { next: 0, n: self.users, run: self.target.run.clone(), hash, line: Vec::new(), at: 0 };
        let hasher = PasswordHasher::new(crate::cores())?;
        let importer = Importer::new(self.admin.store.clone(), &self.admin.keyring, hasher, self.app_id, 8);
        let started = Instant::now();
        let summary =
            importer.run(Format::Jsonl, std::io::BufReader::with_capacity(1 << 20, seed), |_| {}, |_| {}).await?;
        let import_s = started.elapsed().as_secs_f64();
        anyhow::ensure!(summary.imported == self.users, "seeding imported {summary:?}");
        let mut line = json!({
            "run": "growth", "users": self.users,
            "import_rps": (self.users as f64 / import_s).round(),
        });
        if self.copy_baseline {
            line["copy_rps"] = json!(copy_rate(self.database_url, self.app_id).await?.round());
        }

        let t = &self.target;
        let mut users = t.users("w", self.connections + 1).await?;
        let boss = users.pop().ok_or_else(|| anyhow::anyhow!("no supervisor"))?;
        self.admin.add_supervisor(self.app_id, &boss.username).await?;
        let run = t.run.clone();
        let work = async {
            let mut gets = Vec::new();
            for (w, u) in users.iter().cloned().enumerate() {
                gets.push(t.step(Scenario::Get, Via::Http, u, w).await?);
            }
            let get = measure::measure(gets, self.warmup, self.seconds).await?;
            // Sign-ins spread over the seeded users, across the whole index.
            let mut signins = Vec::new();
            for w in 0..self.connections {
                let i = (w as u64 * 7919) % self.users;
                let u = BenchUser {
                    id: String::new(),
                    username: seeded(i, &run),
                    password: PASSWORD.into(),
                    token: String::new(),
                };
                signins.push(t.step(Scenario::Signin, Via::Http, u, w).await?);
            }
            let signin = measure::measure(signins, self.warmup, self.seconds).await?;
            let (page, search) = supervisor_reads(t, &boss, self.users).await?;
            anyhow::Ok((get, signin, page, search))
        };
        let (out, rss) = measure::with_peak_rss(self.server_pid, work).await;
        let (get, signin, page, search) = out?;
        let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
        line["get_p50_ms"] = json!(ms(get.hist.value_at_quantile(0.5)));
        line["get_p99_ms"] = json!(ms(get.hist.value_at_quantile(0.99)));
        line["get_rps"] = json!((get.rps() * 10.0).round() / 10.0);
        line["signin_rps"] = json!((signin.rps() * 10.0).round() / 10.0);
        line["errors"] = json!(get.errors + signin.errors);
        line["list_page_p50_ms"] = json!(ms(page.value_at_quantile(0.5)));
        line["list_page_p99_ms"] = json!(ms(page.value_at_quantile(0.99)));
        line["email_search_p50_ms"] = json!(ms(search.value_at_quantile(0.5)));
        line["email_search_p99_ms"] = json!(ms(search.value_at_quantile(0.99)));
        if let Some(mb) = rss {
            line["server_rss_max_mib"] = json!(mb);
        }
        Ok(line)
    }
}

/// Requests timed one after another by a supervisor.
const SUPERVISOR_READS: usize = 300;

/// A walk of 100-user pages of ListUsers from the start, and searches by
/// email for seeded users spread over the application: their latencies.
async fn supervisor_reads(
    t: &Target,
    boss: &BenchUser,
    users: u64,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let http = reqwest::Client::new();
    let get = |query: String| {
        http.get(format!("{}/v2/users{query}", t.http))
            .header("x-api-key", &t.api_key)
            .header("authorization", format!("Bearer {}", boss.token))
            .send()
    };
    let mut pages = Histogram::<u64>::new(3)?;
    let mut token = String::new();
    for _ in 0..SUPERVISOR_READS {
        let query =
            if token.is_empty() { "?pageSize=100".to_owned() } else { format!("?pageSize=100&pageToken={token}") };
        let start = Instant::now();
        let res = get(query).await?;
        anyhow::ensure!(res.status().is_success(), "ListUsers answered {}", res.status());
        let body: Value = res.json().await?;
        pages.record(start.elapsed().as_micros() as u64)?;
        token = body["nextPageToken"].as_str().unwrap_or_default().to_owned();
        if token.is_empty() {
            break;
        }
    }
    let mut searches = Histogram::<u64>::new(3)?;
    for k in 0..SUPERVISOR_READS as u64 {
        let i = (k * 104_729) % users;
        let start = Instant::now();
        let res = get(format!("?email=g{i}-{}@example.com", t.run)).await?;
        anyhow::ensure!(res.status().is_success(), "a search answered {}", res.status());
        let body: Value = res.json().await?;
        searches.record(start.elapsed().as_micros() as u64)?;
        anyhow::ensure!(body["users"].as_array().map(Vec::len) == Some(1), "a search found {body}");
    }
    Ok((pages, searches))
}

/// PostgreSQL's own COPY of the application's user rows into a table of
/// the same shape and indexes: rows per second.
async fn copy_rate(database_url: &str, app_id: uuid::Uuid) -> anyhow::Result<f64> {
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    sqlx::query("DROP TABLE IF EXISTS bench_copy").execute(&mut conn).await?;
    sqlx::query("CREATE TABLE bench_copy (LIKE users INCLUDING DEFAULTS INCLUDING INDEXES)").execute(&mut conn).await?;
    let mut data = Vec::new();
    {
        let mut out =
            conn.copy_out_raw(&format!("COPY (SELECT * FROM users WHERE app_id = '{app_id}') TO STDOUT")).await?;
        while let Some(chunk) = out.next().await {
            data.extend_from_slice(&chunk?);
        }
    }
    let rows = data.iter().filter(|b| **b == b'\n').count();
    let start = Instant::now();
    let mut copy = conn.copy_in_raw("COPY bench_copy FROM STDIN").await?;
    for chunk in data.chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_copy").execute(&mut conn).await?;
    Ok(rate)
}
