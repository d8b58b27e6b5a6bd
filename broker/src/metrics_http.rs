//! The metrics endpoint: a tiny HTTP/1.0 responder that shard 0 runs when
//! `--metrics-listen` is given. `/metrics` asks every shard for its [`Snapshot`] over the
//! mesh (`Shard::call`) and answers Prometheus text; `/health` answers 200 once every shard
//! answers and the broker is not shutting down, else 503.
//!
//! What this module must never do: wait without a bound (a request head is read for at most
//! [`HTTP_TIMEOUT`], and a shard that does not answer within it makes the scrape a 503), or
//! read more than [`HTTP_HEAD_MAX_BYTES`] of a request.

use std::rc::Rc;
use std::time::Duration;

use crate::metrics::{render, Snapshot};
use crate::shard::Shard;

/// Largest HTTP request head the metrics endpoint reads.
pub const HTTP_HEAD_MAX_BYTES: usize = 8192;
/// How long a scrape waits for the request head and for every shard's snapshot.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Every shard's snapshot, asked over the mesh; None if a shard did not answer.
async fn gather(shard: &Rc<Shard>) -> Option<Vec<Snapshot>> {
    let mut out = Vec::with_capacity(shard.nr_shards);
    for target in 0..shard.nr_shards {
        let call = shard.call(target, |s| async move { s.metrics_snapshot() });
        let answer = glommio::timer::timeout(HTTP_TIMEOUT, async { Ok(call.await) }).await;
        out.push(answer.ok()?.ok()?);
    }
    Some(out)
}

/// Serves `/metrics` and `/health` on `listener` until the task is dropped: one request per
/// connection (HTTP/1.0 style), each on its own task.
pub async fn serve(shard: Rc<Shard>, listener: glommio::net::TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                continue;
            }
        };
        let shard = shard.clone();
        glommio::spawn_local(async move {
            if let Err(e) = answer(&shard, stream).await {
                tracing::debug!("metrics: {e}");
            }
        })
        .detach();
    }
}

async fn answer(shard: &Rc<Shard>, mut stream: glommio::net::TcpStream) -> std::io::Result<()> {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || head.len() + n > HTTP_HEAD_MAX_BYTES {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => match gather(shard).await {
            Some(snapshots) => ("200 OK", "text/plain; version=0.0.4", render(&snapshots)),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "a shard did not answer\n".into(),
            ),
        },
        ("GET", "/health") => match gather(shard).await {
            Some(_) if !shard.is_shutting_down() => ("200 OK", "text/plain", "ok\n".into()),
            _ => (
                "503 Service Unavailable",
                "text/plain",
                "not serving\n".into(),
            ),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /health\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.close().await
}
