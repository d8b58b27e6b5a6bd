//! Baselines measured in the same run as the broker figures: raw loopback TCP bandwidth and
//! raw direct-I/O disk write bandwidth. A broker result is judged as a fraction of these.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;

/// Options of `raw-loopback`.
#[derive(Args, Debug, Clone)]
pub struct LoopbackArgs {
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Bytes per write.
    #[arg(long, default_value_t = 1 << 20)]
    pub write_bytes: usize,
    /// Core of the receiving thread (the broker's core in the suite).
    #[arg(long)]
    pub sink_core: Option<usize>,
    /// Core of the sending thread (the bench's core in the suite).
    #[arg(long)]
    pub source_core: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

/// Options of `raw-disk`.
#[derive(Args, Debug, Clone)]
pub struct DiskArgs {
    /// Directory to write the scratch files in (removed afterwards).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Bytes per write (multiple of 4096).
    #[arg(long, default_value_t = 1 << 20)]
    pub block_bytes: usize,
    /// Writer threads per file, each with one write outstanding.
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    /// Files written at once. With `--files N --depth 1` each file is appended to
    /// sequentially and grown by `--preallocate-bytes` steps, as a broker shard writes N
    /// partitions' logs.
    #[arg(long, default_value_t = 1)]
    pub files: usize,
    /// Files grow in steps of this many bytes (fallocate), as the broker's segments do.
    #[arg(long, default_value_t = 64 << 20)]
    pub preallocate_bytes: u64,
    /// Bytes the scratch files wrap around at, over all files.
    #[arg(long, default_value_t = 1 << 30)]
    pub file_bytes: u64,
    #[arg(long)]
    pub json: bool,
}

fn pin(core: Option<usize>) {
    if let Some(c) = core {
        core_affinity::set_for_current(core_affinity::CoreId { id: c });
    }
}

/// Bytes per second one TCP connection over loopback carries, sender to receiver.
pub fn loopback(args: &LoopbackArgs) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let sink_core = args.sink_core;
    let sink = std::thread::spawn(move || -> Result<u64> {
        pin(sink_core);
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    pin(args.source_core);
    let mut s = TcpStream::connect(address)?;
    let buf = vec![7u8; args.write_bytes];
    let deadline = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < deadline {
        s.write_all(&buf)?;
        sent += buf.len() as u64;
    }
    drop(s);
    let received = sink.join().expect("sink panicked")?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(
        received == sent,
        "loopback lost bytes: sent {sent}, received {received}"
    );
    Ok(sent as f64 / seconds)
}

/// Bytes per second written with O_DIRECT: `files` files, each with `depth` writers striding
/// over it in `block_bytes` writes and growing it by `preallocate_bytes` steps, then one
/// fdatasync per file.
pub fn disk(args: &DiskArgs) -> Result<f64> {
    ensure!(
        args.block_bytes.is_multiple_of(4096) && args.block_bytes > 0,
        "--block-bytes must be a multiple of 4096"
    );
    ensure!(
        args.files > 0 && args.depth > 0,
        "--files and --depth must be positive"
    );
    let mut paths = Vec::new();
    let mut files = Vec::new();
    let opened = (|| -> Result<()> {
        for f in 0..args.files {
            let path = args.dir.join(format!(
                ".shardlog-bench-raw-disk-{}-{f}",
                std::process::id()
            ));
            paths.push(path.clone());
            let file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .with_context(|| format!("opening {} with O_DIRECT", path.display()))?;
            files.push(std::sync::Arc::new(file));
        }
        Ok(())
    })();
    let outcome = opened.and_then(|()| write_files(args, &files));
    drop(files);
    // Removed on failure too: a full disk must not stay full because of us.
    for path in paths {
        let _ = std::fs::remove_file(&path);
    }
    outcome
}

fn write_files(args: &DiskArgs, files: &[std::sync::Arc<std::fs::File>]) -> Result<f64> {
    use std::os::unix::io::AsRawFd;
    let block = args.block_bytes as u64;
    let per_file = (args.file_bytes / args.files as u64).max(block * args.depth as u64);
    let blocks_per_file = (per_file / block).max(args.depth as u64);
    let deadline = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut threads = Vec::new();
    for file in files {
        // Grown by one thread per file, in preallocation steps ahead of the writers.
        let allocated = std::sync::Arc::new(std::sync::Mutex::new(0u64));
        for t in 0..args.depth {
            let (file, allocated) = (file.clone(), allocated.clone());
            let (depth, step) = (args.depth as u64, args.preallocate_bytes.max(block));
            threads.push(std::thread::spawn(move || -> Result<u64> {
                use std::os::unix::fs::FileExt;
                // O_DIRECT needs an aligned buffer: over-allocate and start at a 4 KiB boundary.
                let raw = vec![0x5au8; block as usize + 4096];
                let skew = raw.as_ptr().align_offset(4096);
                let buf = &raw[skew..skew + block as usize];
                let mut written = 0u64;
                let mut i = t as u64;
                while start.elapsed() < deadline {
                    let offset = (i % blocks_per_file) * block;
                    {
                        let mut allocated = allocated.lock().expect("allocation lock");
                        if offset + block > *allocated {
                            let target = (offset + block).max(*allocated + step);
                            // SAFETY: a plain fallocate on an open descriptor we own.
                            let rc = unsafe {
                                libc::fallocate(file.as_raw_fd(), 0, 0, target as libc::off_t)
                            };
                            ensure!(rc == 0, "fallocate: {}", std::io::Error::last_os_error());
                            *allocated = target;
                        }
                    }
                    file.write_all_at(buf, offset)?;
                    written += block;
                    i += depth;
                }
                Ok(written)
            }));
        }
    }
    let mut written = 0;
    for t in threads {
        written += t.join().expect("writer panicked")?;
    }
    for file in files {
        file.sync_data()?;
    }
    Ok(written as f64 / start.elapsed().as_secs_f64())
}
