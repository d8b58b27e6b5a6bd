//! Server start and stop: one pinned glommio executor per shard, a listening socket per
//! shard on the same address (SO_REUSEPORT spreads connections), the channel mesh between
//! shards, and a clean shutdown on SIGTERM/SIGINT (flush and sync every log, exit 0).

use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::mpsc;

use futures_channel::oneshot;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement};

use std::time::Duration;

use crate::catalog::Catalog;
use crate::cluster::{self, ClusterConfig, ControlHandle};
use crate::config::Config;
use crate::shard::{Job, Shard};

/// Jobs queued between two shards before the sender waits.
const MESH_CHANNEL_CAPACITY: usize = 1024;
/// Longest a shutdown waits for requests already taken (long polls end at their deadline).
const SHUTDOWN_DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// Registered io_uring buffer memory per executor; RLIMIT_MEMLOCK is often only 8 MiB.
const IO_MEMORY_BYTES: usize = 512 << 10;

/// Longest a controlled shutdown waits for the quorum to move this broker's leaderships.
const CONTROLLED_SHUTDOWN_MAX: Duration = Duration::from_secs(5);

/// Run the broker until SIGTERM or SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    crate::startup::check_memlock(IO_MEMORY_BYTES)?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| crate::startup::data_dir_error("create", &config.data_dir, e))?;
    let _lock = lock_data_dir(&config)?;
    let listeners = bind_listeners(&config)?;
    let address = listeners.1;
    let mut config = config;
    if config.advertise_port == 0 {
        // Listening on port 0 picks a free port: advertise the one actually bound, or
        // clients would be told to connect to port 0.
        config.advertise_port = address.port();
    }
    let control = cluster::start(ClusterConfig {
        node_id: config.node_id,
        voters: config.voters.clone(),
        controller_listen: config.controller_listen.clone(),
        advertised_host: config.advertise_host.clone(),
        advertised_port: config.advertise_port,
        session_timeout: Duration::from_millis(config.broker_session_timeout_ms),
        heartbeat_interval: Duration::from_millis(config.broker_heartbeat_interval_ms),
        data_dir: config.data_dir.clone(),
        leader_rebalance_interval: (config.leader_imbalance_check_interval_ms > 0)
            .then(|| Duration::from_millis(config.leader_imbalance_check_interval_ms)),
    })
    .map_err(anyhow::Error::msg)?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let Some(catalog) = wait_until_registered(&control, &mut signals) else {
        tracing::info!("stopped before the metadata quorum registered this node");
        return Ok(());
    };
    let mesh = MeshBuilder::<Job, _>::full(config.cores, MESH_CHANNEL_CAPACITY);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (drained_tx, drained_rx) = mpsc::channel::<usize>();
    let mut stops = Vec::new();
    let mut closes = Vec::new();
    let mut threads = Vec::new();
    for (id, fd) in listeners.0.into_iter().enumerate() {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        stops.push(stop_tx);
        let (close_tx, close_rx) = oneshot::channel::<()>();
        closes.push(close_tx);
        let drained = drained_tx.clone();
        let config = config.clone();
        let catalog = catalog.clone();
        let control = control.clone();
        let mesh = mesh.clone();
        let ready = ready_tx.clone();
        let cpu = config.first_cpu + id;
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{id}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move {
                let listener = unsafe { TcpListener::from_raw_fd(fd) };
                let stop = Stop {
                    stop: stop_rx,
                    drained,
                    close: close_rx,
                };
                run_shard(id, config, catalog, control, mesh, listener, ready, stop).await
            })
            .map_err(|e| anyhow::anyhow!("cores: cannot start shard {id} on cpu {cpu}: {e}"))?;
        threads.push(handle);
    }
    drop(ready_tx);
    for _ in 0..config.cores {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("{e}"),
            Err(_) => anyhow::bail!("a shard stopped during start"),
        }
    }
    tracing::info!(shards = config.cores, data_dir = %config.data_dir.display(), "listening on {address}");
    eprintln!("listening on {address}");

    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down: moving leaderships to other brokers");
    }
    // Controlled shutdown: other in-sync replicas take over this broker's partitions while
    // it still answers, so clients move over with retriable errors, not timeouts.
    if let Err(e) = control.controlled_shutdown(CONTROLLED_SHUTDOWN_MAX) {
        tracing::warn!("controlled shutdown: {e}; stopping anyway");
    }
    tracing::info!("shutting down: flushing and syncing every log");
    // Two phases: every shard first finishes the requests it took (which may need other
    // shards, through the mesh, to answer), and only once all have, closes its logs. A shard
    // closing early would fail or strand requests of its peers that it owns partitions of.
    for stop in stops {
        let _ = stop.send(());
    }
    drop(drained_tx);
    for _ in 0..config.cores {
        if drained_rx.recv().is_err() {
            break; // a shard thread is gone; the others still close their logs
        }
    }
    for close in closes {
        let _ = close.send(());
    }
    for handle in threads {
        let _ = handle.join();
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Block until the metadata quorum knows this node as a live broker (a voter needs a
/// majority of the voters up; a broker-only node needs to reach the quorum), saying so
/// in the log meanwhile. Returns the catalog to start the shards with.
fn wait_until_registered(
    control: &ControlHandle,
    signals: &mut signal_hook::iterator::Signals,
) -> Option<Catalog> {
    let view = control.view();
    let started = std::time::Instant::now();
    let mut said = started;
    loop {
        let catalog = view.borrow().clone();
        if control.is_serving(&catalog) {
            return Some((*catalog).clone());
        }
        if signals.pending().next().is_some() {
            return None;
        }
        if said.elapsed() >= Duration::from_secs(5) {
            tracing::info!(
                "waiting for the metadata quorum to register this node ({} s so far)",
                started.elapsed().as_secs()
            );
            said = std::time::Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How the main thread stops a shard: `stop` (stop taking requests and finish those taken),
/// the shard answers on `drained`, then `close` (close and sync every log).
struct Stop {
    stop: oneshot::Receiver<()>,
    drained: mpsc::Sender<usize>,
    close: oneshot::Receiver<()>,
}

#[allow(clippy::too_many_arguments)]
async fn run_shard(
    id: usize,
    config: Config,
    catalog: Catalog,
    control: ControlHandle,
    mesh: MeshBuilder<Job, glommio::channels::channel_mesh::Full>,
    listener: TcpListener,
    ready: mpsc::Sender<Result<(), String>>,
    stop: Stop,
) {
    let config = Rc::new(config);
    let (senders, receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(_) => {
            let _ = ready.send(Err(format!("shard {id}: cannot join the mesh")));
            return;
        }
    };
    let shard = Shard::new(id, config.clone(), senders, control);
    shard.spawn_mesh_receivers(receivers);
    if let Err(e) = shard.apply_catalog(catalog).await {
        let _ = ready.send(Err(format!("shard {id}: {e}")));
        return;
    }
    if id == 0 {
        shard.follow_control_plane();
    }
    crate::replication::start(&shard);
    if let Err(e) = shard.start_groups().await {
        let _ = ready.send(Err(format!("shard {id}: {e}")));
        return;
    }
    let background = glommio::executor().create_task_queue(
        glommio::Shares::Static(100),
        glommio::Latency::NotImportant,
        "background",
    );
    let storage = shard.storage.clone();
    let retention_ms = config.retention_check_interval_ms;
    glommio::spawn_local_into(
        async move { storage.run_background(retention_ms).await },
        background,
    )
    .map(|t| t.detach())
    .ok();
    // The cleaner gets a small share and no latency promise: requests and flushes first.
    let cleaner_queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(25),
        glommio::Latency::NotImportant,
        "cleaner",
    );
    let storage = shard.storage.clone();
    let cleaner = config.cleaner.clone();
    glommio::spawn_local_into(
        async move { storage.run_cleaner(cleaner).await },
        cleaner_queue,
    )
    .map(|t| t.detach())
    .ok();
    let metrics = match (id, config.metrics_listen) {
        (0, Some(address)) => match glommio::net::TcpListener::bind(address) {
            Ok(listener) => Some(glommio::spawn_local(crate::metrics_http::serve(
                shard.clone(),
                listener,
            ))),
            Err(e) => {
                let why = format!("metrics_listen: cannot bind {address}: {e}");
                let _ = ready.send(Err(why));
                return;
            }
        },
        _ => None,
    };
    let _ = ready.send(Ok(()));

    let budget = Rc::new(Semaphore::new(config.max_buffered_bytes_per_shard as u64));
    let budget_limit = config.max_buffered_bytes_per_shard as u64;
    shard.metrics.watch_budget(budget.clone(), budget_limit);
    let unsent = budget.clone();
    let connections = Rc::new(std::cell::Cell::new(0usize));
    let accept_shard = shard.clone();
    let acceptor = glommio::spawn_local(async move {
        loop {
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(shard = id, "accept failed: {e}");
                    continue;
                }
            };
            if connections.get() >= accept_shard.config.max_connections_per_shard {
                tracing::warn!(
                    shard = id,
                    "connection limit reached; closing new connection"
                );
                drop(stream);
                let refused = &accept_shard.metrics.connections_refused;
                refused.set(refused.get() + 1);
                continue;
            }
            connections.set(connections.get() + 1);
            let metrics = &accept_shard.metrics;
            metrics.connections_open.set(connections.get() as u64);
            metrics
                .connections_total
                .set(metrics.connections_total.get() + 1);
            let (shard, budget, connections) =
                (accept_shard.clone(), budget.clone(), connections.clone());
            glommio::spawn_local(async move {
                crate::net::serve(shard.clone(), stream, budget).await;
                connections.set(connections.get() - 1);
                shard.metrics.connections_open.set(connections.get() as u64);
            })
            .detach();
        }
    });
    let _ = stop.stop.await;
    // Stop taking connections and requests, let the requests already taken finish and their
    // responses go out (bounded: a response holds its budget share until written), then,
    // once every shard got there, flush and sync every log so the next start needs no
    // recovery scan.
    shard.begin_shutdown();
    drop(acceptor.cancel());
    if let Some(metrics) = metrics {
        drop(metrics.cancel());
    }
    shard.quiesce_groups();
    let budget_bytes = config.max_buffered_bytes_per_shard as u64;
    let busy = || shard.requests_in_flight.get() > 0 || unsent.available() < budget_bytes;
    let deadline = std::time::Instant::now() + SHUTDOWN_DRAIN_MAX;
    while busy() && std::time::Instant::now() < deadline {
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
    if busy() {
        tracing::warn!(
            shard = id,
            left = shard.requests_in_flight.get(),
            unsent_bytes = budget_bytes - unsent.available(),
            "requests still running at shutdown"
        );
    }
    let _ = stop.drained.send(id);
    let _ = stop.close.await;
    shard.close_logs().await;
    shard.stop_groups().await;
}

/// One listening socket per shard on the same address (resolving port 0 once).
///
/// The shards' sockets share the port with SO_REUSEPORT, which would just as happily let a
/// second broker (or any process of the same user) join the group: the kernel would then
/// split new connections between the two, and clients would see topics come and go. So the
/// address is first bound once without SO_REUSEPORT: that fails while anyone listens there.
fn bind_listeners(config: &Config) -> anyhow::Result<(Vec<i32>, std::net::SocketAddr)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut address = config.listen;
    if address.port() != 0 {
        probe_address_free(address)?;
    }
    let mut fds = Vec::with_capacity(config.cores);
    for _ in 0..config.cores {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_port(true)?;
        socket.set_reuse_address(true)?;
        socket
            .bind(&address.into())
            .map_err(|e| anyhow::anyhow!("listen: cannot bind {address}: {e}"))?;
        socket.listen(1024)?;
        if address.port() == 0 {
            address = socket.local_addr()?.as_socket().expect("inet socket");
        }
        fds.push(socket.into_raw_fd());
    }
    Ok((fds, address))
}

/// How long a start waits for a listener on its address to go away. A broker killed a
/// moment ago can leave its listening socket behind for a while (io_uring releases the
/// files of a dead process's rings asynchronously); a live broker never lets go.
const ADDRESS_FREE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Fails while a listener (of any process) holds `address`: a bind without SO_REUSEPORT
/// fails then. SO_REUSEADDR still lets a restarted broker bind over its old connections.
fn probe_address_free(address: std::net::SocketAddr) -> anyhow::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let deadline = std::time::Instant::now() + ADDRESS_FREE_WAIT;
    loop {
        let probe = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        probe.set_reuse_address(true)?;
        match probe.bind(&address.into()) {
            Ok(()) => return Ok(()),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => anyhow::bail!(
                "listen: cannot bind {address}: already in use by another process ({e}); \
                 stop it or choose another --listen address"
            ),
        }
    }
}

/// Refuse to run two brokers on one data dir: an flock held for the process's life.
fn lock_data_dir(config: &Config) -> anyhow::Result<std::fs::File> {
    let path = config.data_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| crate::startup::data_dir_error("write", &path, e))?;
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        anyhow::bail!(
            "data_dir: {} is in use by another shardlog process",
            config.data_dir.display()
        );
    }
    Ok(file)
}
