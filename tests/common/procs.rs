//! Redis processes of the tests' own on 127.0.0.1: single servers, a Redis Cluster and a
//! Sentinel setup, each killed when dropped (a test that panics kills them too), paused with
//! SIGSTOP and resumed, killed and restarted on the same port with the same files. Each can
//! speak TLS only ([`Tls`]: certificates the test made).
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (bound to 0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A directory of the test's own under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "entur-auth-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// TLS for the servers: PEM files of a CA, and of a certificate it signed for 127.0.0.1 with
/// its key (made by the test).
#[derive(Clone, Debug)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    /// redis-server's options (a Sentinel's configuration file takes the same, one a line):
    /// TLS only on `port`, the plain port off; clients are not asked for a certificate; the
    /// cluster bus and replication (a Sentinel's own connections too) over TLS as well.
    fn options(&self, port: u16) -> Vec<(&'static str, String)> {
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            ("port", "0".to_owned()),
            ("tls-port", port.to_string()),
            ("tls-cert-file", path(&self.cert)),
            ("tls-key-file", path(&self.key)),
            ("tls-ca-cert-file", path(&self.ca)),
            ("tls-auth-clients", "no".to_owned()),
            ("tls-replication", "yes".to_owned()),
        ]
    }

    /// redis-cli's options to reach a server of this CA.
    fn cli_args(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            self.ca.display().to_string(),
        ]
    }
}

/// One `redis-server` process (a server, a cluster node or a Sentinel) on a loopback port.
pub struct Node {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    dir: PathBuf,
    tls: Option<Tls>,
}

impl Node {
    /// Starts `redis-server` with `args` in `dir`, on `port`, and waits until it accepts
    /// connections.
    pub fn start(port: u16, dir: &Path, args: &[String]) -> Node {
        Node::start_with(port, dir, args, None)
    }

    /// The same, for a server whose `args` make it speak `tls` only.
    pub fn start_with(port: u16, dir: &Path, args: &[String], tls: Option<&Tls>) -> Node {
        let mut node = Node {
            child: None,
            port,
            args: args.to_vec(),
            dir: dir.to_owned(),
            tls: tls.cloned(),
        };
        node.restart();
        node
    }

    /// A plain server on a free port, persistence off.
    pub fn server(dir: &Path, extra: &[&str]) -> Node {
        Node::server_with(dir, extra, None)
    }

    /// The same, speaking `tls` only when given.
    pub fn server_with(dir: &Path, extra: &[&str], tls: Option<&Tls>) -> Node {
        let port = free_port();
        let mut args = base_args(port, tls);
        args.extend(extra.iter().map(|s| s.to_string()));
        Node::start_with(port, dir, &args, tls)
    }

    /// `redis://127.0.0.1:<port>/`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// (Re)starts the process with the same arguments and files.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server did not start on 127.0.0.1:{}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGSTOP: the process keeps its port (the kernel still accepts connections) and
    /// answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the node runs");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// `redis-cli -p <port> <args>` (over TLS to a TLS server): its output, or `None` when
    /// it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli_with(self.port, self.tls.as_ref(), args)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p <port> <args>` with a short timeout: its output, or `None` when it failed.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    cli_with(port, None, args)
}

fn cli_with(port: u16, tls: Option<&Tls>, args: &[&str]) -> Option<String> {
    let output = Command::new("timeout")
        .args(["5", "redis-cli", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(tls.map(Tls::cli_args).unwrap_or_default())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn base_args(port: u16, tls: Option<&Tls>) -> Vec<String> {
    let mut args: Vec<String> = match tls {
        None => vec!["--port".into(), port.to_string()],
        Some(tls) => tls
            .options(port)
            .into_iter()
            .flat_map(|(name, value)| [format!("--{name}"), value])
            .collect(),
    };
    args.extend(
        [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args
}

/// Waits up to `limit` for `done`; panics with `what` if it never is.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis Cluster: `primaries` primaries with `replicas` replicas each, made with
/// `redis-cli --cluster create`. Nodes fail over after 1 s without an answer.
pub struct Cluster {
    pub nodes: Vec<Node>,
    _dir: TempDir,
}

impl Cluster {
    pub fn start(primaries: usize, replicas: usize) -> Cluster {
        Cluster::start_with(primaries, replicas, None)
    }

    /// The same, every node speaking `tls` only when given (the cluster bus too).
    pub fn start_with(primaries: usize, replicas: usize, tls: Option<&Tls>) -> Cluster {
        let dir = TempDir::new("cluster");
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            let port = free_port();
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut args = base_args(port, tls);
            if tls.is_some() {
                args.extend(["--tls-cluster".to_owned(), "yes".to_owned()]);
            }
            // The bus port is port + 10000 unless given: past 65535 for high ports.
            args.extend(["--cluster-port".to_owned(), free_port().to_string()]);
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    // A shard without a primary leaves the others serving their slots.
                    "--cluster-require-full-coverage",
                    "no",
                    // A replica may take over however long it was cut off.
                    "--cluster-replica-validity-factor",
                    "0",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            nodes.push(Node::start_with(port, &node_dir, &args, tls));
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("timeout")
            .args(["30", "redis-cli", "--cluster", "create"])
            .args(&addresses)
            .args(tls.map(Tls::cli_args).unwrap_or_default())
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs (apt-get install redis-tools)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Cluster { nodes, _dir: dir };
        cluster.wait_ok();
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Waits until every running node says `cluster_state:ok` and agrees on who serves
    /// every slot.
    pub fn wait_ok(&self) {
        wait_for(
            "cluster_state:ok on every node",
            Duration::from_secs(30),
            || {
                self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                    n.cli(&["cluster", "info"])
                        .is_some_and(|info| info.contains("cluster_state:ok"))
                })
            },
        );
    }

    /// The node that serves `slot` now, as the running node `asker` sees it.
    pub fn primary_of(&self, slot: u16) -> usize {
        let asker = self.nodes.iter().find(|n| n.is_running()).unwrap();
        let nodes = asker.cli(&["cluster", "nodes"]).unwrap();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let mut bounds = range.split('-');
                let low = bounds.next().and_then(|b| b.parse::<u16>().ok());
                let high = bounds.next().and_then(|b| b.parse::<u16>().ok()).or(low);
                matches!((low, high), (Some(low), Some(high)) if (low..=high).contains(&slot))
            });
            if serves {
                let port: u16 = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .unwrap();
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no primary serves slot {slot}:\n{nodes}");
    }

    /// The node id of node `i`.
    pub fn id(&self, i: usize) -> String {
        self.nodes[i]
            .cli(&["cluster", "myid"])
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Moves `slot`, with its keys, from primary `from` to primary `to`, the way
    /// `redis-cli --cluster reshard` does: IMPORTING / MIGRATING, MIGRATE, SETSLOT NODE.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize) {
        let slot_text = slot.to_string();
        let (from_id, to_id) = (self.id(from), self.id(to));
        let (source, target) = (&self.nodes[from], &self.nodes[to]);
        target
            .cli(&["cluster", "setslot", &slot_text, "importing", &from_id])
            .unwrap();
        source
            .cli(&["cluster", "setslot", &slot_text, "migrating", &to_id])
            .unwrap();
        let keys = source
            .cli(&["cluster", "getkeysinslot", &slot_text, "100"])
            .unwrap();
        for key in keys.lines().filter(|k| !k.is_empty()) {
            let port = target.port.to_string();
            source
                .cli(&["migrate", "127.0.0.1", &port, key, "0", "5000"])
                .unwrap();
        }
        for node in [target, source] {
            node.cli(&["cluster", "setslot", &slot_text, "node", &to_id])
                .unwrap();
        }
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let _ = node.cli(&["cluster", "setslot", &slot_text, "node", &to_id]);
        }
    }
}

/// One master, one replica and three Sentinels (quorum 2) watching it as `mymaster`; the
/// master counts as down after 1 s without an answer.
pub struct Sentinels {
    pub master: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    _dir: TempDir,
}

pub const MASTER_NAME: &str = "mymaster";

impl Sentinels {
    pub fn start() -> Sentinels {
        Sentinels::start_with(None)
    }

    /// The same, the master, the replica and the Sentinels speaking `tls` only when given
    /// (replication and the Sentinels' own connections too).
    pub fn start_with(tls: Option<&Tls>) -> Sentinels {
        let dir = TempDir::new("sentinel");
        let master = Node::server_with(dir.path(), &[], tls);
        let master_port = master.port.to_string();
        let replica =
            Node::server_with(dir.path(), &["--replicaof", "127.0.0.1", &master_port], tls);
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            let listen: String = match tls {
                None => format!("port {port}\n"),
                Some(tls) => tls
                    .options(port)
                    .into_iter()
                    .map(|(name, value)| format!("{name} {value}\n"))
                    .collect(),
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}bind 127.0.0.1\ndaemonize no\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 4000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n"
                ),
            )
            .unwrap();
            let args = vec![conf.display().to_string(), "--sentinel".to_owned()];
            sentinels.push(Node::start_with(port, dir.path(), &args, tls));
        }
        let setup = Sentinels {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        wait_for(
            "the replica in sync and every Sentinel seeing both",
            Duration::from_secs(30),
            || {
                setup
                    .replica
                    .cli(&["info", "replication"])
                    .is_some_and(|i| i.contains("master_link_status:up"))
                    && setup.sentinels.iter().all(|s| {
                        s.cli(&["sentinel", "replicas", MASTER_NAME])
                            .is_some_and(|r| !r.trim().is_empty())
                            && s.cli(&["sentinel", "sentinels", MASTER_NAME])
                                .is_some_and(|r| r.matches("name").count() >= 2)
                    })
            },
        );
        setup
    }

    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Node::url).collect()
    }

    /// The master's port as the first answering Sentinel names it.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let answer = s.cli(&["sentinel", "get-master-addr-by-name", MASTER_NAME])?;
            answer.lines().nth(1)?.trim().parse().ok()
        })
    }
}
