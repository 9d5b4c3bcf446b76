//! A cell of `onecard serve` processes on loopback: each node its own process, its
//! own directory and config, one master key between them, as docs/OPERATIONS.md
//! starts a cell. The harness starts, kills, pauses and restarts nodes, asks each
//! for its view of the cell (`/api/cluster`), and reads a stopped node's replica.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::proxy::Proxy;
use crate::{Server, TempDir, run_onecard};

/// A node's three addresses.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    /// The node's id.
    pub id: u64,
    /// Its cluster link, as the other members reach it (a proxy's, for a node behind
    /// one).
    pub cluster: SocketAddr,
    /// Where it listens for its peers.
    pub cluster_listen: SocketAddr,
    /// Its terminal port.
    pub terminals: SocketAddr,
    /// Its admin API.
    pub admin: SocketAddr,
}

/// A running (or partly stopped) cell.
#[derive(Debug)]
pub struct Cell {
    dir: TempDir,
    members: Vec<Member>,
    nodes: BTreeMap<u64, Option<Server>>,
    env: BTreeMap<u64, Vec<(String, String)>>,
    demo_cards: u64,
    /// The proxy in front of each node's cluster link, in a cell started behind them.
    proxies: BTreeMap<u64, Proxy>,
}

/// A free loopback port, released for the caller to bind (a race another process
/// could win in principle; on a test machine it does not).
fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

impl Cell {
    /// Writes the files of a cell of `size` nodes whose first leader builds a demo
    /// campus of `demo_cards` cards, and starts every node.
    ///
    /// # Panics
    /// If a file cannot be written or a node does not start.
    #[must_use]
    pub fn start(label: &str, size: u64, demo_cards: u64) -> Self {
        Self::start_with_env(label, size, demo_cards, &BTreeMap::new())
    }

    /// [`Cell::start`] with extra environment variables for some nodes.
    ///
    /// # Panics
    /// As [`Cell::start`].
    #[must_use]
    pub fn start_with_env(
        label: &str,
        size: u64,
        demo_cards: u64,
        env: &BTreeMap<u64, Vec<(String, String)>>,
    ) -> Self {
        Self::build(label, size, demo_cards, env, false)
    }

    /// [`Cell::start`] with every node's cluster link behind a proxy of its own: the
    /// members list the proxies' addresses, each node listens on its own
    /// (`cluster_listen`), and [`Cell::cut`] cuts a node's inbound link.
    ///
    /// # Panics
    /// As [`Cell::start`].
    #[must_use]
    pub fn start_behind_proxies(label: &str, size: u64, demo_cards: u64) -> Self {
        Self::build(label, size, demo_cards, &BTreeMap::new(), true)
    }

    fn build(
        label: &str,
        size: u64,
        demo_cards: u64,
        env: &BTreeMap<u64, Vec<(String, String)>>,
        proxied: bool,
    ) -> Self {
        let dir = TempDir::new(label);
        let mut proxies = BTreeMap::new();
        // Every port stays bound until all are chosen, so a proxy's own port (the
        // system picks it) is never one already chosen for a node.
        let mut reserved = Vec::new();
        let mut reserve = || {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
            let address = listener.local_addr().expect("a bound port's address");
            reserved.push(listener);
            address
        };
        let members: Vec<Member> = (1..=size)
            .map(|id| {
                let cluster_listen = reserve();
                let cluster = if proxied {
                    let proxy = Proxy::start(cluster_listen);
                    let address = proxy.address();
                    proxies.insert(id, proxy);
                    address
                } else {
                    cluster_listen
                };
                Member { id, cluster, cluster_listen, terminals: reserve(), admin: reserve() }
            })
            .collect();
        drop(reserved);
        let key_file = dir.path().join("master.key");
        let key: String = (0..32).map(|i| format!("{:02x}", (i * 37 + 11) % 256)).collect();
        std::fs::write(&key_file, format!("{key}\n")).expect("write the master key");
        set_private(&key_file);
        let mut cell =
            Self { dir, members, nodes: BTreeMap::new(), env: env.clone(), demo_cards, proxies };
        for id in 1..=size {
            cell.write_config(id);
        }
        for id in 1..=size {
            cell.start_node(id);
        }
        cell
    }

    /// Writes node `id`'s config, its members table listing every member known now.
    fn write_config(&self, id: u64) {
        let mut table = String::new();
        for m in &self.members {
            let _ = write!(
                table,
                "\n[[cluster.members]]\nid = {}\ncluster = \"{}\"\nterminals = \"{}\"\nadmin = \"{}\"\n",
                m.id, m.cluster, m.terminals, m.admin
            );
        }
        let me = self.members.iter().find(|m| m.id == id).expect("a member");
        let listen = if me.cluster_listen == me.cluster {
            String::new()
        } else {
            format!("cluster_listen = \"{}\"\n", me.cluster_listen)
        };
        let text = format!(
            "data_dir = {:?}\nmaster_key_file = {:?}\ndemo = true\ndemo_cards = {}\n\
             backup_at = \"off\"\n\n[cluster]\ncell = \"test-campus\"\nnode_id = {id}\n\
             {listen}{table}",
            self.node_dir(id).display().to_string(),
            self.dir.path().join("master.key").display().to_string(),
            self.demo_cards,
        );
        std::fs::write(self.config(id), text).expect("write a node's config");
    }

    /// A new member with addresses of its own and the next id, its config written
    /// and the node started: it waits, empty, to be added (`POST /api/cluster/members`).
    ///
    /// # Panics
    /// If the node does not start.
    pub fn add_node(&mut self) -> Member {
        let id = self.members.iter().map(|m| m.id).max().unwrap_or(0) + 1;
        let cluster = free_address();
        let member = Member {
            id,
            cluster,
            cluster_listen: cluster,
            terminals: free_address(),
            admin: free_address(),
        };
        self.members.push(member);
        self.write_config(id);
        self.start_node(id);
        member
    }

    /// The admin API of node `id` (the leader), logged in as `admin`.
    ///
    /// # Panics
    /// If the admin cannot log in.
    #[must_use]
    pub fn admin(&self, id: u64) -> crate::Api {
        let admin = self.members.iter().find(|m| m.id == id).expect("a member").admin;
        // The bootstrap password is on the node that led first.
        let first = self
            .members
            .iter()
            .map(|m| self.node_dir(m.id))
            .find(|dir| dir.join("initial-admin-password").exists())
            .expect("the first leader's initial-admin-password");
        crate::admin_of(admin, &first)
    }

    /// The members, by id.
    #[must_use]
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Every node's terminal address, as a terminal of the cell is configured.
    #[must_use]
    pub fn terminal_addresses(&self) -> Vec<String> {
        self.members.iter().map(|m| m.terminals.to_string()).collect()
    }

    /// Node `id`'s config file.
    #[must_use]
    pub fn config(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.toml"))
    }

    /// Node `id`'s directory.
    #[must_use]
    pub fn node_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    /// Node `id`'s log (stderr, every start appended).
    #[must_use]
    pub fn log(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    /// Starts node `id` (again).
    ///
    /// # Panics
    /// If it is running, or does not start.
    pub fn start_node(&mut self, id: u64) {
        assert!(self.nodes.get(&id).is_none_or(Option::is_none), "node {id} is running");
        let env: Vec<(&str, &str)> = self
            .env
            .get(&id)
            .map(|vars| vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
            .unwrap_or_default();
        let server = Server::start_node(&self.config(id), &self.node_dir(id), &env, &self.log(id));
        self.nodes.insert(id, Some(server));
    }

    /// Kills node `id` with SIGKILL, as a crash would.
    pub fn kill(&mut self, id: u64) {
        if let Some(server) = self.nodes.get_mut(&id).and_then(Option::take) {
            server.kill();
        }
    }

    /// Stops node `id` with SIGTERM and waits for it.
    pub fn stop(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        self.nodes.get_mut(&id).and_then(Option::take).map(Server::stop)
    }

    /// Cuts node `id`'s inbound cluster link at its proxy: no peer reaches it (its
    /// own calls to the others still go through).
    ///
    /// # Panics
    /// If the cell was not started behind proxies.
    pub fn cut(&self, id: u64) {
        self.proxies.get(&id).expect("a cell behind proxies").cut();
    }

    /// Heals node `id`'s link cut by [`Cell::cut`].
    ///
    /// # Panics
    /// If the cell was not started behind proxies.
    pub fn heal(&self, id: u64) {
        self.proxies.get(&id).expect("a cell behind proxies").heal();
    }

    /// Connections to node `id` its proxy refused while cut.
    ///
    /// # Panics
    /// If the cell was not started behind proxies.
    #[must_use]
    pub fn refused(&self, id: u64) -> u64 {
        self.proxies.get(&id).expect("a cell behind proxies").refused()
    }

    /// Sends `signal` (`STOP`, `CONT`) to node `id`.
    pub fn signal(&self, id: u64, signal: &str) {
        if let Some(Some(server)) = self.nodes.get(&id) {
            server.signal(signal);
        }
    }

    /// Whether node `id`'s process is running (it may have exited on its own).
    pub fn is_running(&mut self, id: u64) -> bool {
        self.nodes.get_mut(&id).and_then(Option::as_mut).is_some_and(Server::is_running)
    }

    /// Node `id`'s `/api/cluster`, or `None` if it does not answer within a second.
    #[must_use]
    pub fn status(&self, id: u64) -> Option<serde_json::Value> {
        let member = self.members.iter().find(|m| m.id == id)?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(1)))
            .build();
        let agent = ureq::Agent::new_with_config(config);
        let mut response =
            agent.get(&format!("http://{}/api/cluster", member.admin)).call().ok()?;
        response.body_mut().read_json().ok()
    }

    /// The node whose ledger is open (it leads and has caught up), waiting up to
    /// `timeout` for one.
    ///
    /// # Panics
    /// If none is within `timeout`.
    #[must_use]
    pub fn wait_leader(&self, timeout: Duration) -> u64 {
        self.wait_leader_other_than(None, timeout)
    }

    /// [`Cell::wait_leader`], for a leader other than `not` (the one just killed).
    ///
    /// # Panics
    /// If none is within `timeout`.
    #[must_use]
    pub fn wait_leader_other_than(&self, not: Option<u64>, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            for m in self.members.iter().filter(|m| Some(m.id) != not) {
                let open = self.status(m.id).is_some_and(|s| s["ledger_open"] == true);
                if open {
                    return m.id;
                }
            }
            assert!(Instant::now() < deadline, "no node led the cell within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running node has applied the same index and it has not
    /// moved for a second (nothing left to write), and returns it.
    ///
    /// # Panics
    /// If that does not happen within `timeout`.
    #[must_use]
    pub fn wait_quiescent(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut stable_since: Option<(u64, Instant)> = None;
        loop {
            let indices: Vec<Option<u64>> = self
                .nodes
                .iter()
                .filter(|(_, server)| server.is_some())
                .map(|(id, _)| self.status(*id).and_then(|s| s["applied_index"].as_u64()))
                .collect();
            let first = indices.first().copied().flatten();
            let agreed = first.filter(|_| indices.iter().all(|i| *i == first));
            match (agreed, stable_since) {
                (Some(index), Some((held, since))) if index == held => {
                    if since.elapsed() >= Duration::from_secs(1) {
                        return index;
                    }
                }
                (Some(index), _) => stable_since = Some((index, Instant::now())),
                (None, _) => stable_since = None,
            }
            assert!(
                Instant::now() < deadline,
                "the replicas did not settle within {timeout:?}: {indices:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A stopped node's replica: the index it was applied through and its state hash.
    ///
    /// # Panics
    /// If `onecard cell hash` fails.
    #[must_use]
    pub fn replica_hash(&self, id: u64) -> String {
        let config = self.config(id);
        run_onecard(&["cell", "hash", "--config", config.to_str().expect("a UTF-8 path")])
            .trim()
            .to_owned()
    }

    /// `onecard verify` on a stopped node's replica.
    ///
    /// # Panics
    /// If the replica fails verification.
    #[must_use]
    pub fn verify(&self, id: u64) -> String {
        let config = self.config(id);
        run_onecard(&["verify", "--config", config.to_str().expect("a UTF-8 path")])
    }

    /// The demo campus's terminals (id, key hex, category), from the node that built
    /// it.
    ///
    /// # Panics
    /// If no node holds the demo's files.
    #[must_use]
    pub fn demo_terminals(&self) -> Vec<(u32, String, String)> {
        let file = self
            .members
            .iter()
            .map(|m| self.node_dir(m.id).join("demo").join("terminals.csv"))
            .find(|path| path.exists())
            .expect("the demo's terminals.csv on the first leader");
        std::fs::read_to_string(file)
            .expect("read terminals.csv")
            .lines()
            .skip(1)
            .map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                (
                    fields[0].parse().expect("a terminal id"),
                    fields[4].to_owned(),
                    fields[2].to_owned(),
                )
            })
            .collect()
    }

    /// The cell's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cell {
    /// Keeps the nodes' logs in `$ONECARD_CELL_LOGS/<cell dir name>/` when that is
    /// set, for reading after a failure.
    fn drop(&mut self) {
        for server in self.nodes.values_mut().filter_map(Option::take) {
            server.kill();
        }
        let Some(keep) = std::env::var_os("ONECARD_CELL_LOGS") else { return };
        let Some(name) = self.dir.path().file_name() else { return };
        let to = Path::new(&keep).join(name);
        let _ = std::fs::create_dir_all(&to);
        for m in &self.members {
            let _ = std::fs::copy(self.log(m.id), to.join(format!("node{}.log", m.id)));
        }
    }
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the master key");
}
