//! A TCP fault proxy on loopback, between the gateway and the broker or HA:
//! pass traffic through, add latency, blackhole it (accept, read, never
//! answer) or reset every connection. Modes change at run time.

use std::net::SocketAddr;
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
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    connections: Arc<Mutex<usize>>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(Mode::Pass);
        let connections = Arc::new(Mutex::new(0));
        let count = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                tokio::spawn(relay(client, upstream, rx.clone()));
            }
        });
        FaultProxy { addr, mode, connections }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

/// Drops the connection with a TCP reset. A zero linger time never blocks
/// (tokio deprecates set_linger for the blocking case only).
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

async fn relay(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
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
        Mode::Pass => to.write_all(bytes).await.is_ok(),
        Mode::Reset => false,
    }
}
