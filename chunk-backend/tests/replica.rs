//! Star writes across real chunk-server processes: one of three is killed mid-stream, the
//! writer seals and moves on, readers see every acknowledged record exactly once.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chunk_backend::replica::client::ReplicatedLog;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_port(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "port {port} did not open"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// A chunk-server process with small test chunks.
fn spawn_chunk_server(data: &std::path::Path, addr: &str, master: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chunk-server"))
        .args(["--data"])
        .arg(data)
        .args(["--listen", addr, "--master", master])
        .args([
            "--blocks",
            "256",
            "--block-size",
            "65536",
            "--chunk-blocks",
            "4",
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chunk server")
}

struct Cluster {
    master: String,
    procs: Vec<(String, Child)>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn cluster(servers: usize) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let mport = free_port();
    let master = format!("127.0.0.1:{mport}");
    let m = Command::new(env!("CARGO_BIN_EXE_chunk-master"))
        .args(["--data"])
        .arg(dir.path().join("master"))
        .args(["--listen", &master])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn master");
    wait_port(mport);
    let mut procs = vec![(master.clone(), m)];
    for i in 0..servers {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let c = spawn_chunk_server(&dir.path().join(format!("server-{i}")), &addr, &master);
        wait_port(port);
        procs.push((addr, c));
    }
    // Registration happens right after the port opens; give it a moment.
    std::thread::sleep(Duration::from_millis(200));
    Cluster {
        master,
        procs,
        _dir: dir,
    }
}

fn record(i: u64) -> Vec<u8> {
    let mut v = format!("record-{i}-").into_bytes();
    v.resize(100 + (i as usize * 131) % 5000, b'a' + (i % 26) as u8);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_does_not_lose_or_duplicate_records() {
    let mut c = cluster(4);
    let log = ReplicatedLog::open(&c.master, 1).await.expect("open");
    let mut acked = Vec::new();
    let mut victim_addr = None;
    let mut victim_chunk = None;
    for i in 0..120u64 {
        let (pos, v) = log.append(&record(i)).await.expect("append");
        acked.push((pos, v, i));
        if i == 50 {
            // Kill a server holding the current chunk.
            let placements = log.placements().await.expect("placements");
            let last = placements.last().expect("a chunk");
            let current = last.servers[0].clone();
            victim_chunk = Some(last.chunk);
            victim_addr = Some(current.clone());
            let (_, victim) = c
                .procs
                .iter_mut()
                .find(|(a, _)| *a == current)
                .expect("victim");
            victim.kill().expect("kill -9");
            victim.wait().expect("wait");
        }
    }
    log.close().await.expect("close");
    // The victim's chunk was sealed at the last length all replicas acknowledged, and the
    // writer went on with a new chunk on three healthy servers.
    let placements = log.placements().await.expect("placements");
    assert!(placements.len() >= 2, "{placements:?}");
    assert!(placements.iter().all(|p| p.sealed_len.is_some()));
    let victim = victim_addr.expect("a victim");
    let hit = placements
        .iter()
        .find(|p| Some(p.chunk) == victim_chunk)
        .expect("the victim's chunk");
    assert_eq!(hit.servers.len(), 2, "sealed on the two survivors: {hit:?}");
    assert!(!hit.servers.contains(&victim));
    let after: Vec<_> = placements.iter().filter(|p| p.seq > hit.seq).collect();
    assert!(!after.is_empty(), "the writer moved on to a new chunk");
    assert!(
        after
            .iter()
            .all(|p| p.servers.len() == 3 && !p.servers.contains(&victim)),
        "{after:?}"
    );
    // A fresh reader sees every acknowledged record exactly once, in order, byte for byte.
    let reader = ReplicatedLog::open(&c.master, 1).await.expect("reader");
    let recs = reader.records().await.expect("records");
    assert_eq!(recs.len(), acked.len());
    for ((pos, v, data), (apos, av, i)) in recs.iter().zip(&acked) {
        assert_eq!((pos, v), (apos, av));
        assert_eq!(data, &record(*i));
    }
    // A new writer continues the version sequence.
    let w = ReplicatedLog::open(&c.master, 1).await.expect("writer");
    assert_eq!(
        w.append(b"after").await.expect("append").1,
        acked.len() as u64 + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_than_three_servers_is_a_clear_error() {
    let c = cluster(2);
    let log = ReplicatedLog::open(&c.master, 9).await.expect("open");
    let e = log
        .append(b"x")
        .await
        .expect_err("two servers cannot hold three replicas");
    assert!(e.to_string().contains("3 needed"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_replicated() {
    let c = cluster(3);
    let store = chunk_backend::conformance::Replicated::new(&c.master);
    chunk_backend::conformance::run(&store).await;
}

/// One chunk-server process takes concurrent appends to several chunks and is killed with
/// SIGKILL; restarted on the same data, it has every acknowledged record of every chunk, byte
/// for byte, and past them only records that were in flight (sent, not yet acknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_server_killed_mid_append_keeps_the_acknowledged_prefix() {
    use chunk_backend::replica::proto::{
        chunk_server_client::ChunkServerClient, AppendRequest, CreateChunkRequest, ReadRequest,
        StatRequest,
    };
    let mut c = cluster(1);
    let (addr, _) = &c.procs[1];
    let addr = addr.clone();
    let url = format!("http://{addr}");
    let mut client = ChunkServerClient::connect(url.clone())
        .await
        .expect("connect");
    for chunk in 1..=4u64 {
        client
            .create(CreateChunkRequest {
                chunk,
                blob: chunk,
                seq: 0,
            })
            .await
            .expect("create");
    }
    // Four writers, one per chunk, each appending in order and noting what was acknowledged.
    let mut tasks = Vec::new();
    for chunk in 1..=4u64 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut cl = ChunkServerClient::connect(url).await.expect("connect");
            let (mut end, mut acked, mut sent) = (0u64, Vec::new(), Vec::new());
            for i in 0u64.. {
                let rec = record(chunk * 1000 + i);
                sent.push(rec.clone());
                match cl
                    .append(AppendRequest {
                        chunk,
                        expected_end: end,
                        records: vec![rec.clone()],
                    })
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        acked.push((end, rec));
                        end = r.end;
                    }
                    Err(_) => return (chunk, acked, sent),
                }
            }
            (chunk, acked, sent)
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, victim) = &mut c.procs[1];
    victim.kill().expect("kill -9");
    victim.wait().expect("wait");
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("writer"));
    }
    // Restart on the same data and port.
    let data = c._dir.path().join("server-0");
    let port: u16 = addr
        .rsplit(':')
        .next()
        .expect("port")
        .parse()
        .expect("port");
    let restarted = spawn_chunk_server(&data, &addr, &c.master);
    c.procs[1].1 = restarted;
    wait_port(port);
    let mut cl = ChunkServerClient::connect(url).await.expect("reconnect");
    let mut total = 0;
    for (chunk, acked, sent) in results {
        total += acked.len();
        let len = cl
            .stat(StatRequest { chunk })
            .await
            .expect("stat")
            .into_inner()
            .length;
        let mut off = 0u64;
        let mut found = Vec::new();
        while off < len {
            let p = cl
                .read(ReadRequest { chunk, offset: off })
                .await
                .expect("read")
                .into_inner()
                .payload;
            off += 24 + p.len() as u64;
            found.push(p);
        }
        assert!(
            found.len() >= acked.len(),
            "chunk {chunk}: {} found, {} acknowledged",
            found.len(),
            acked.len()
        );
        for (k, (_, rec)) in acked.iter().enumerate() {
            assert_eq!(&found[k], rec, "chunk {chunk}: acknowledged record {k}");
        }
        // Anything past the acknowledged prefix was sent (in flight when the server died).
        for (k, extra) in found.iter().enumerate().skip(acked.len()) {
            assert_eq!(
                Some(extra),
                sent.get(k),
                "chunk {chunk}: record {k} was never sent"
            );
        }
    }
    assert!(total > 20, "the load made progress: {total}");
}

/// One writer per blob: a second writer is refused while the first holds the lease; once it
/// expires, the second takes over, sealing the blob's last chunk, which fences the first off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replicated_writer_at_a_time() {
    let c = cluster(3);
    let a = ReplicatedLog::open_as(&c.master, 5, "a", Duration::from_millis(600))
        .await
        .expect("a");
    a.append(b"from a").await.expect("a appends");
    let b = ReplicatedLog::open_as(&c.master, 5, "b", Duration::from_secs(10))
        .await
        .expect("b");
    let e = b.append(b"from b").await.expect_err("a holds the lease");
    assert!(e.to_string().contains("leased to a"), "{e}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let b = ReplicatedLog::open_as(&c.master, 5, "b", Duration::from_secs(10))
        .await
        .expect("b again");
    let (_, v) = b
        .append(b"from b")
        .await
        .expect("b takes over after expiry");
    assert_eq!(v, 2);
    // a's chunk was sealed by b: a can no longer write, even to its old chunk.
    assert!(
        a.append(b"late a").await.is_err(),
        "the old writer is fenced off"
    );
    let reader = ReplicatedLog::open(&c.master, 5).await.expect("reader");
    let recs: Vec<Vec<u8>> = reader
        .records()
        .await
        .expect("records")
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(recs, vec![b"from a".to_vec(), b"from b".to_vec()]);
}

/// The master never replaces a placement, and lease tokens from before a restart are dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_never_overwrites_and_forgets_old_tokens() {
    use chunk_backend::replica::proto::{
        master_client::MasterClient, AllocateRequest, LeaseRequest, SealChunkRequest,
    };
    let mut c = cluster(3);
    let url = format!("http://{}", c.master);
    let mut m = MasterClient::connect(url.clone()).await.expect("master");
    let token = m
        .lease(LeaseRequest {
            blob: 7,
            holder: "w".into(),
            ttl_ms: 60_000,
        })
        .await
        .expect("lease")
        .into_inner()
        .token;
    let alloc = |seq| AllocateRequest {
        blob: 7,
        seq,
        exclude: vec![],
        token,
    };
    let p0 = m.allocate(alloc(0)).await.expect("seq 0").into_inner();
    let again = m.allocate(alloc(0)).await.expect_err("seq 0 is placed");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again}");
    let early = m.allocate(alloc(1)).await.expect_err("seq 0 is not sealed");
    assert_eq!(early.code(), tonic::Code::FailedPrecondition, "{early}");
    m.seal_chunk(SealChunkRequest {
        blob: 7,
        chunk: p0.chunk,
        length: 0,
        servers: vec![],
        token,
    })
    .await
    .expect("seal");
    m.allocate(alloc(1)).await.expect("seq 1 after the seal");
    // Restart the master on the same state: the old token is refused.
    let (addr, master) = &mut c.procs[0];
    master.kill().expect("kill");
    master.wait().expect("wait");
    let port: u16 = addr
        .rsplit(':')
        .next()
        .expect("port")
        .parse()
        .expect("port");
    let respawned = Command::new(env!("CARGO_BIN_EXE_chunk-master"))
        .args(["--data"])
        .arg(c._dir.path().join("master"))
        .args(["--listen", addr.as_str()])
        .stderr(Stdio::null())
        .spawn()
        .expect("respawn");
    c.procs[0].1 = respawned;
    wait_port(port);
    let mut m = MasterClient::connect(url).await.expect("master again");
    let stale = m
        .seal_chunk(SealChunkRequest {
            blob: 7,
            chunk: p0.chunk,
            length: 0,
            servers: vec![],
            token,
        })
        .await;
    assert_eq!(
        stale.expect_err("a token from before the restart").code(),
        tonic::Code::PermissionDenied
    );
    let fresh = m
        .lease(LeaseRequest {
            blob: 7,
            holder: "w".into(),
            ttl_ms: 60_000,
        })
        .await
        .expect("lease")
        .into_inner()
        .token;
    assert_ne!(fresh, token);
    let placed = m
        .blob(chunk_backend::replica::proto::BlobRequest { blob: 7 })
        .await
        .expect("blob")
        .into_inner()
        .chunks;
    assert_eq!(
        placed.len(),
        2,
        "placements survive the restart: {placed:?}"
    );
}
