//! A private PostgreSQL cluster for tests that stop, start or starve the
//! database: made with `initdb` in a temporary folder and run with `pg_ctl`
//! on a free port, so the machine's shared server is never touched.
//! PostgreSQL refuses to run as root; as root, the cluster belongs to the
//! `postgres` user and its commands run as that user (`runuser`).

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
}

/// The folder of `initdb` and `pg_ctl`: `PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`.
fn bin_dir() -> Option<PathBuf> {
    let usable = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(dir)).filter(|d| usable(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| usable(d))
        .collect();
    versions.sort();
    if let Some((_, d)) = versions.pop() {
        return Some(d);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())).filter(|d| usable(d))
}

pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PgCluster {
    /// A new cluster, running; None (after saying why) when PostgreSQL's
    /// server binaries are not installed.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// A new cluster with `settings` added to its postgresql.conf, running.
    pub fn start_with(settings: &[&str]) -> Option<Self> {
        let Some(bin) = bin_dir() else {
            eprintln!(
                "SKIPPED: PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql or set PG_BIN"
            );
            return None;
        };
        let cluster = Self::folder(bin);
        let data = cluster.data();
        cluster.run("initdb", &["-D", &data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]);
        cluster.configure(settings);
        cluster.start_again();
        Some(cluster)
    }

    /// A cluster of the same PostgreSQL not made yet: an empty folder of
    /// its own and a free port, for a data folder restored by hand.
    pub fn empty(&self) -> Self {
        Self::folder(self.bin.clone())
    }

    /// The cluster's folder (the data folder is `data` in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs a shell script in the cluster's folder as the cluster's owner,
    /// PostgreSQL's programs first on PATH, and insists that it succeeds:
    /// the commands an operator types.
    pub fn shell(&self, script: &str) -> Output {
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default());
        let mut c = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        };
        let out = c.env("PATH", path).current_dir(&self.dir).output().unwrap_or_else(|e| panic!("sh: {e}"));
        assert!(
            out.status.success(),
            "{script} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
        out
    }

    /// A folder of its own (the `postgres` user's when root), nothing in it yet.
    fn folder(bin: PathBuf) -> Self {
        let dir = std::env::temp_dir().join(format!("usersvc-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = Self { bin, dir, port: free_port() };
        if running_as_root() {
            let status = Command::new("chown").args(["-R", "postgres:"]).arg(&cluster.dir).status().unwrap();
            assert!(status.success(), "chown of the cluster folder to postgres");
        }
        cluster
    }

    /// Appends settings to postgresql.conf (the file keeps its owner).
    fn configure(&self, settings: &[&str]) {
        use std::io::Write;
        let mut conf = std::fs::OpenOptions::new().append(true).open(self.dir.join("data/postgresql.conf")).unwrap();
        for s in settings {
            writeln!(conf, "{s}").unwrap();
        }
    }

    /// A streaming standby of this cluster (which must allow replication:
    /// `wal_level = replica`), made with `pg_basebackup -R` and running on
    /// a port of its own. `settings` are added to its postgresql.conf.
    pub fn standby(&self, settings: &[&str]) -> Self {
        let standby = Self::folder(self.bin.clone());
        let port = self.port.to_string();
        standby.run(
            "pg_basebackup",
            &[
                "-D",
                &standby.data(),
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        standby.configure(settings);
        standby.start_again();
        standby
    }

    /// Makes a standby the primary (`pg_ctl promote`, waiting until it is).
    pub fn promote(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-w", "-t", "60", "promote"]);
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Runs one of the cluster's programs (as `postgres` when root) and
    /// insists that it succeeds.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let out = if running_as_root() {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&path).args(args).current_dir(&self.dir).output()
        } else {
            Command::new(&path).args(args).output()
        }
        .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
        out
    }

    /// Starts the cluster and waits until it takes connections.
    pub fn start_again(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.display());
        let log = self.dir.join("log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "-t", "60", "start"]);
    }

    /// Stops the cluster: `fast` ends every session and shuts down
    /// cleanly, `immediate` is a crash (recovery at the next start).
    pub fn stop(&self, mode: &str) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "-t", "60", "stop"]);
    }

    /// A database URL on the cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A connection of the test's own, to look or to hold locks.
    pub async fn connect(&self, db: &str) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.url(db))
            .await
            .expect("connect to the private cluster")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let path = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if running_as_root() {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&path).args(args).current_dir(&self.dir).output()
        } else {
            Command::new(&path).args(args).output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
