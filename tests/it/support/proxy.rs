//! A TCP fault proxy on loopback, between the gateway and the broker or HA:
//! pass traffic through, add latency, limit the bandwidth, blackhole it
//! (accept, read, never answer), reset every connection, or — in front of
//! HA — answer every request itself with `429 Too Many Requests` like a
//! rate-limiting reverse proxy. Modes change at run time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Each chunk is delayed this long.
    Latency(Duration),
    /// Bytes are read and dropped; nothing is answered.
    Blackhole,
    /// Every connection is closed with a reset, now and on arrival.
    Reset,
    /// At most this many bytes per second each way.
    Bandwidth(usize),
    /// Each HTTP request is answered `429` with `Retry-After: <secs>` and
    /// `Connection: close`; nothing reaches the upstream.
    TooManyRequests(u32),
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    connections: Arc<Mutex<usize>>,
    refused: Arc<AtomicUsize>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(Mode::Pass);
        let connections = Arc::new(Mutex::new(0));
        let count = Arc::clone(&connections);
        let refused = Arc::new(AtomicUsize::new(0));
        let refused_count = Arc::clone(&refused);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                tokio::spawn(relay(client, upstream, rx.clone(), Arc::clone(&refused_count)));
            }
        });
        FaultProxy { addr, mode, connections, refused }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }

    /// Requests answered `429` so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

/// Drops the connection with a TCP reset. A zero linger time never blocks
/// (tokio deprecates set_linger for the blocking case only).
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

async fn relay(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>, refused: Arc<AtomicUsize>) {
    if *mode.borrow() == Mode::Reset {
        reset(client);
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    loop {
        let current = *mode.borrow();
        tokio::select! {
            _ = mode.changed() => {
                if *mode.borrow() == Mode::Reset {
                    if let Ok(client) = cr.reunite(cw) {
                        reset(client);
                    }
                    return;
                }
            }
            n = cr.read(&mut up) => {
                let Ok(n @ 1..) = n else { return };
                if let Mode::TooManyRequests(secs) = current {
                    if answer_429(&up[..n], &mut cr, &mut cw, secs).await {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
                if !forward(current, &mut sw, &up[..n]).await { return }
            }
            n = sr.read(&mut down) => {
                let Ok(n @ 1..) = n else { return };
                if !forward(current, &mut cw, &down[..n]).await { return }
            }
        }
    }
}

async fn forward(mode: Mode, to: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) -> bool {
    match mode {
        Mode::Blackhole => true,
        Mode::Latency(d) => {
            tokio::time::sleep(d).await;
            to.write_all(bytes).await.is_ok()
        }
        Mode::Bandwidth(per_second) => {
            // Twenty slices a second: smooth enough to look like a slow link.
            for slice in bytes.chunks((per_second / 20).max(1)) {
                tokio::time::sleep(Duration::from_secs_f64(slice.len() as f64 / per_second as f64)).await;
                if to.write_all(slice).await.is_err() {
                    return false;
                }
            }
            true
        }
        Mode::Pass | Mode::TooManyRequests(_) => to.write_all(bytes).await.is_ok(),
        Mode::Reset => false,
    }
}

/// Reads the rest of the HTTP request that begins with `first` (headers and
/// a `Content-Length` body) and answers it `429`. False if the client went
/// away first.
async fn answer_429(
    first: &[u8],
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    retry_after: u32,
) -> bool {
    let mut request = first.to_vec();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let body: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + body {
                break;
            }
        }
        match from.read(&mut buf).await {
            Ok(n @ 1..) => request.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {retry_after}\r\nContent-Type: text/plain\r\n\
         Content-Length: 18\r\nConnection: close\r\n\r\nToo Many Requests\n"
    );
    to.write_all(response.as_bytes()).await.is_ok()
}
