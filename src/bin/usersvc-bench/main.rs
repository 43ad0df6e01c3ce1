//! `usersvc-bench`: load for a running usersvc, and the machine's own limits
//! to hold it against. Each run prints one JSON line; `report` turns the
//! lines of one session into `bench/results.md`. See bench/README.md.

mod baseline;
mod growth;
mod measure;
mod report;
mod scenario;

use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use usersvc::{
    admin::Admin,
    config::{DatabaseArgs, KeyArgs},
};

use scenario::{Scenario, Target, Via};

#[derive(Parser)]
#[command(name = "usersvc-bench", about = "Load and baselines for usersvc; one JSON line per run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Makes an application and its users, then runs a scenario.
    Run(RunArgs),
    /// One-row SELECT by primary key straight to PostgreSQL (the baseline).
    Postgres {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[command(flatten)]
        timing: Timing,
    },
    /// PostgreSQL's own audited-update work: UPDATE of a 400-byte row plus
    /// INSERT of a trail-shaped row per transaction (the baseline of PUT).
    PostgresWrite {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[command(flatten)]
        timing: Timing,
    },
    /// From commit to being covered by a signed checkpoint, for the trail
    /// records written since a time.
    CheckpointLag {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// RFC 3339.
        #[arg(long)]
        since: chrono::DateTime<chrono::Utc>,
    },
    /// The trail at scale: fills a database of its own with records and
    /// times `audit list --user` / `--since` pages.
    TrailScale {
        /// A database of its own (made and migrated here).
        #[arg(long)]
        database_url: String,
        #[arg(long, default_value_t = 10_000_000)]
        records: i64,
    },
    /// argon2id hashes/s at the service's parameters on every core.
    Argon2 {
        /// Threads (default: every core).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Starts a command again and again and times it until `--readyz`
    /// answers 200 (the command is stopped after each start).
    Startup {
        #[arg(long)]
        readyz: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Seeds an application with N users through `import`, then times
    /// GET, sign-in, a ListUsers page and an email search at that size.
    Growth {
        #[arg(long)]
        users: u64,
        /// Also time PostgreSQL's COPY of the same rows (import's baseline).
        #[arg(long)]
        copy_baseline: bool,
        #[command(flatten)]
        timing: Timing,
        #[arg(long)]
        server_pid: Option<u32>,
        #[arg(long, default_value = "127.0.0.1:50051")]
        grpc_addr: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: String,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Turns JSON lines into the results table (markdown on stdout).
    Report { files: Vec<std::path::PathBuf> },
}

#[derive(Args, Clone)]
struct Timing {
    /// Concurrent connections, each with its own user.
    #[arg(long, short = 'c', default_value_t = 16)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, short = 's', default_value_t = 10)]
    seconds: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    scenario: Scenario,
    #[arg(long, value_enum, default_value = "http")]
    via: Via,
    #[command(flatten)]
    timing: Timing,
    /// Extra connections signing in all the time (over the same `--via`).
    #[arg(long, default_value_t = 0)]
    storm: usize,
    /// A label for the run's line (e.g. how the server was started).
    #[arg(long)]
    tag: Option<String>,
    /// The server's process id, to report its peak resident size.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_addr: String,
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: String,
    /// The service's database and master key: the run makes its application there.
    #[command(flatten)]
    db: DatabaseArgs,
    #[command(flatten)]
    keys: KeyArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Postgres { database_url, timing } => {
            let (warmup, secs) = (Duration::from_secs(timing.warmup), Duration::from_secs(timing.seconds));
            let out = baseline::postgres(&database_url, timing.connections, warmup, secs).await?;
            let mut line = json!({"run": "postgres_point_lookup", "connections": timing.connections});
            merge(&mut line, out.figures());
            println!("{line}");
            Ok(())
        }
        Command::PostgresWrite { database_url, timing } => {
            let (warmup, secs) = (Duration::from_secs(timing.warmup), Duration::from_secs(timing.seconds));
            let out = baseline::postgres_update_insert(&database_url, timing.connections, warmup, secs).await?;
            let mut line = json!({"run": "postgres_update_insert", "connections": timing.connections});
            merge(&mut line, out.figures());
            println!("{line}");
            Ok(())
        }
        Command::CheckpointLag { database_url, since } => {
            let (p50, p99, max, records) = baseline::checkpoint_lag(&database_url, since).await?;
            let r = |x: f64| (x * 1000.0).round() / 1000.0;
            let line =
                json!({"run": "checkpoint_lag", "records": records, "p50_s": r(p50), "p99_s": r(p99), "max_s": r(max)});
            println!("{line}");
            Ok(())
        }
        Command::TrailScale { database_url, records } => {
            let (fill_s, user_ms, since_ms, app_user_ms) = baseline::trail_scale(&database_url, records).await?;
            let r = |x: f64| (x * 100.0).round() / 100.0;
            let line = json!({"run": "trail_scale", "records": records, "fill_s": r(fill_s),
                "user_page_ms": r(user_ms), "since_page_ms": r(since_ms), "app_user_page_ms": r(app_user_ms)});
            println!("{line}");
            Ok(())
        }
        Command::Argon2 { threads, seconds } => {
            let threads = threads.unwrap_or_else(cores);
            let rate =
                tokio::task::spawn_blocking(move || baseline::argon2(threads, Duration::from_secs(seconds))).await??;
            let line = json!({"run": "argon2", "threads": threads, "hashes_per_s": (rate * 10.0).round() / 10.0,
                "params": format!("m={} KiB, t={}, p={}", usersvc::auth::password::MEMORY_KIB,
                    usersvc::auth::password::ITERATIONS, usersvc::auth::password::PARALLELISM)});
            println!("{line}");
            Ok(())
        }
        Command::Startup { readyz, runs, command } => startup(&readyz, runs, &command).await,
        Command::Report { files } => report::print(&files),
        Command::Growth { users, copy_baseline, timing, server_pid, grpc_addr, http_addr, db, keys } => {
            let (store, _) = usersvc::store::backend::open(&db.database_url, 4).await?;
            let admin = Admin::new(store, keys.load_for(&db.database_url)?);
            let (app, target) = new_target(&admin, "growth", &grpc_addr, &http_addr).await?;
            let line = growth::Growth {
                admin: &admin,
                database_url: &db.database_url,
                target,
                app_id: app.id,
                users,
                connections: timing.connections,
                warmup: Duration::from_secs(timing.warmup),
                seconds: Duration::from_secs(timing.seconds),
                copy_baseline,
                server_pid,
            }
            .run()
            .await?;
            println!("{line}");
            Ok(())
        }
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn merge(line: &mut Value, figures: serde_json::Map<String, Value>) {
    if let Value::Object(m) = line {
        m.extend(figures);
    }
}

/// A new application of a run, and the service it is reached at.
async fn new_target(
    admin: &Admin,
    label: &str,
    grpc_addr: &str,
    http_addr: &str,
) -> anyhow::Result<(usersvc::store::App, Target)> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let (app, key) = admin.create_app(&format!("{label} {run}")).await?;
    let target = Target {
        grpc: format!("http://{grpc_addr}"),
        http: format!("http://{http_addr}"),
        api_key: secrecy::ExposeSecret::expose_secret(&key).to_owned(),
        run,
    };
    Ok((app, target))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let (store, pool) = usersvc::store::backend::open(&args.db.database_url, 2).await?;
    let admin = Admin::new(store, args.keys.load_for(&args.db.database_url)?);
    let (app, target) = new_target(&admin, "bench", &args.grpc_addr, &args.http_addr).await?;
    let t = &args.timing;
    let users = target.users("u", t.connections).await?;
    if args.scenario == Scenario::Groups {
        let sup = target.users("sup", 1).await?.remove(0);
        admin.add_supervisor(app.id, &sup.username).await?;
        target.groups(&sup, &users).await?;
    }
    let stormers = target.users("storm", args.storm).await?;
    pool.close().await;

    let mut steps = Vec::new();
    for (w, user) in users.into_iter().enumerate() {
        steps.push(target.step(args.scenario, args.via, user, w).await?);
    }
    let mut storm = Vec::new();
    for (w, user) in stormers.into_iter().enumerate() {
        storm.push(target.step(Scenario::Signin, args.via, user, w).await?);
    }
    let (warmup, secs) = (Duration::from_secs(t.warmup), Duration::from_secs(t.seconds));
    let work = async {
        if storm.is_empty() {
            (measure::measure(steps, warmup, secs).await, None)
        } else {
            let (a, b) = tokio::join!(measure::measure(steps, warmup, secs), measure::measure(storm, warmup, secs));
            (a, Some(b))
        }
    };
    let ((main, storm), rss) = measure::with_peak_rss(args.server_pid, work).await;
    let mut line = json!({
        "run": args.scenario, "via": args.via, "connections": t.connections, "seconds": t.seconds,
    });
    merge(&mut line, main?.figures());
    if let Some(tag) = &args.tag {
        line["tag"] = json!(tag);
    }
    if let Some(storm) = storm {
        let storm = storm?;
        line["storm_connections"] = json!(args.storm);
        line["storm_rps"] = json!((storm.rps() * 10.0).round() / 10.0);
        line["storm_errors"] = json!(storm.errors);
    }
    if let Some(mb) = rss {
        line["server_rss_max_mib"] = json!(mb);
    }
    println!("{line}");
    Ok(())
}

/// Stops a started service as an operator would (SIGTERM, then waits for it
/// to finish), so the next start does not meet its leftovers.
async fn stop(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill only sends a signal to the process we started.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_ok() {
            return;
        }
    }
    child.kill().await.ok();
}

async fn startup(readyz: &str, runs: usize, command: &[String]) -> anyhow::Result<()> {
    let (program, rest) = command.split_first().ok_or_else(|| anyhow::anyhow!("no command to start"))?;
    let http = reqwest::Client::builder().timeout(Duration::from_millis(500)).build()?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let mut child = tokio::process::Command::new(program)
            .args(rest)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let ready = loop {
            if http.get(readyz).send().await.is_ok_and(|r| r.status().is_success()) {
                break Some(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(30) || child.try_wait()?.is_some() {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        stop(&mut child).await;
        let ready = ready.ok_or_else(|| anyhow::anyhow!("the service did not become ready"))?;
        times.push((ready.as_secs_f64() * 1e4).round() / 10.0);
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let line = json!({"run": "startup", "runs": runs, "ready_ms": times, "median_ms": sorted[sorted.len() / 2], "max_ms": max});
    println!("{line}");
    Ok(())
}
