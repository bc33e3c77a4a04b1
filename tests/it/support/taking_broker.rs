//! A scripted MQTT 5 broker for the client-id takeover: it accepts every
//! connection, answers CONNECT with a CONNACK, then at once sends
//! `DISCONNECT` with reason 0x8E (Session taken over) and closes, as a broker
//! following MQTT-3.1.4-3 does when another client takes the client id.
//! (Mosquitto 2.0.11, the tests' broker, only closes the connection.)
//! It records when each connection arrived.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// CONNACK: no session, success, no properties.
const CONNACK: [u8; 5] = [0x20, 0x03, 0x00, 0x00, 0x00];
/// DISCONNECT: Session taken over, no properties.
const TAKEN_OVER: [u8; 4] = [0xE0, 0x02, 0x8E, 0x00];

pub struct TakingBroker {
    pub port: u16,
    connections: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TakingBroker {
    pub async fn start() -> TakingBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let seen = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                seen.lock().unwrap().push(Instant::now());
                tokio::spawn(take_over(stream));
            }
        });
        TakingBroker { port, connections, task }
    }

    /// When each connection arrived, in order.
    pub fn connections(&self) -> Vec<Instant> {
        self.connections.lock().unwrap().clone()
    }
}

impl Drop for TakingBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the CONNECT, answers, throws the client out. Reads on until the
/// client closes (at most 2 s), so nothing it sends meanwhile turns the close
/// into a reset that could discard the DISCONNECT before it is read.
async fn take_over(mut stream: TcpStream) {
    if read_packet(&mut stream).await.is_none() {
        return;
    }
    let _ = stream.write_all(&CONNACK).await;
    let _ = stream.write_all(&TAKEN_OVER).await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// One MQTT packet: fixed header, variable-length remaining length, body.
async fn read_packet(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let _kind = stream.read_u8().await.ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = stream.read_u8().await.ok()?;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return None;
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await.ok()?;
    Some(body)
}
