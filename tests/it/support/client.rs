//! A test MQTT 5 client: publish commands, collect what the gateway publishes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::PREFIX;

#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    pub correlation_data: Option<Bytes>,
}

impl Message {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {:?}", self.topic, self.payload))
    }
}

pub struct TestClient {
    pub client: AsyncClient,
    /// PUBACKs received: publishes the broker accepted.
    accepted: Arc<AtomicUsize>,
    rx: mpsc::UnboundedReceiver<Message>,
    /// Everything received so far and not yet taken.
    seen: Vec<Message>,
}

impl TestClient {
    /// Connects and subscribes to `filters`; returns once the subscriptions are acked.
    pub async fn connect(port: u16, id: &str, filters: &[&str]) -> TestClient {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30)).set_request_channel_capacity(100_000);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        opts.set_network_options(network);
        let (client, mut eventloop) = AsyncClient::new(opts, 100_000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (subacked_tx, mut subacked_rx) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let puback = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let msg = Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.clone(),
                            retain: p.retain,
                            correlation_data: p.properties.as_ref().and_then(|p| p.correlation_data.clone()),
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subacked_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        puback.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        for f in filters {
            // Retain As Published, so tests can see which messages are retained.
            let filter = Filter { preserve_retain: true, ..Filter::new(*f, QoS::AtLeastOnce) };
            client.subscribe_many([filter]).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), subacked_rx.recv()).await.expect("suback in time");
        }
        TestClient { client, accepted, rx, seen: Vec::new() }
    }

    /// Waits until the broker has acknowledged `n` QoS 1 publishes of this
    /// client (`publish` only queues them).
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.accepted.load(Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broker accepted only {} of {n}",
                self.accepted.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.into()).await.unwrap();
    }

    pub async fn publish_qos(&self, topic: &str, payload: impl Into<Bytes>, qos: QoS, retain: bool) {
        self.client.publish(topic, qos, retain, payload.into()).await.unwrap();
    }

    pub async fn publish_request(&self, topic: &str, payload: &str, response_topic: &str, correlation: &[u8]) {
        let props = PublishProperties {
            response_topic: Some(response_topic.into()),
            correlation_data: Some(Bytes::copy_from_slice(correlation)),
            ..Default::default()
        };
        self.client.publish_with_properties(topic, QoS::AtLeastOnce, false, payload.to_owned(), props).await.unwrap();
    }

    fn drain(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m);
        }
    }

    /// Takes every message on `topic` received so far.
    pub fn take(&mut self, topic: &str) -> Vec<Message> {
        self.drain();
        let (taken, rest) = std::mem::take(&mut self.seen).into_iter().partition(|m| m.topic == topic);
        self.seen = rest;
        taken
    }

    /// Waits for the first message (already seen or new) on `topic` matching
    /// `pred`, takes it and returns it; panics after `timeout`.
    pub async fn expect(&mut self, topic: &str, timeout: Duration, pred: impl Fn(&Message) -> bool) -> Message {
        match self.try_expect(topic, timeout, pred).await {
            Some(m) => m,
            None => panic!(
                "timed out waiting for a message on {topic}; saw: {:?}",
                self.seen.iter().map(|m| (&m.topic, String::from_utf8_lossy(&m.payload))).collect::<Vec<_>>()
            ),
        }
    }

    /// [`TestClient::expect`], or `None` when nothing matching came in time.
    pub async fn try_expect(
        &mut self,
        topic: &str,
        timeout: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(i) = self.seen.iter().position(|m| m.topic == topic && pred(m)) {
                return Some(self.seen.remove(i));
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => self.seen.push(m),
                Ok(None) => panic!("client closed"),
                Err(_) => return None,
            }
        }
    }

    /// Publishes `payload` on `<prefix>/call/<domain>/<service>` (QoS 1) and
    /// returns the result, e.g. `call("light.turn_on", r#"{"entity_id":…}"#)`.
    pub async fn call(&mut self, service: &str, payload: impl Into<Bytes>) -> Value {
        let path = service.replacen('.', "/", 1);
        self.publish(&format!("{PREFIX}/call/{path}"), payload).await;
        self.result(&format!("{PREFIX}/result/{path}")).await
    }

    /// Publishes `payload` on `<prefix>/set/<domain>/<object_id>` and returns
    /// the result published for `result_service` (`light.turn_on`…).
    pub async fn set(&mut self, entity: &str, payload: impl Into<Bytes>, result_service: &str) -> Value {
        self.publish(&format!("{PREFIX}/set/{}", entity.replacen('.', "/", 1)), payload).await;
        self.result(&format!("{PREFIX}/result/{}", result_service.replacen('.', "/", 1))).await
    }

    /// Publishes on `<prefix>/get/<domain>/<object_id>` and returns the
    /// result (only failures have one).
    pub async fn get_result(&mut self, entity: &str) -> Value {
        let (domain, object_id) = entity.split_once('.').expect("an entity id");
        self.publish(&format!("{PREFIX}/get/{domain}/{object_id}"), Vec::new()).await;
        self.result(&format!("{PREFIX}/result/{domain}/get")).await
    }

    /// The next result on `topic` (a JSON object).
    pub async fn result(&mut self, topic: &str) -> Value {
        self.expect(topic, Duration::from_secs(10), |_| true).await.json()
    }

    /// The retained messages under `base` (`base/#`) on the broker at `port`,
    /// topic → payload: a new client subscribes, then publishes a marker
    /// under `base`; the broker sends the retained messages before it.
    pub async fn retained(port: u16, base: &str, timeout: Duration) -> std::collections::BTreeMap<String, Bytes> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let id = format!("retained-reader-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let mut reader = TestClient::connect(port, &id, &[&format!("{base}/#")]).await;
        let marker = format!("{base}/~end-of-retained~/{id}");
        reader.publish(&marker, "").await;
        let mut tree = std::collections::BTreeMap::new();
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, reader.rx.recv()).await {
                Ok(Some(m)) if m.topic == marker => break,
                Ok(Some(m)) if m.retain => {
                    tree.insert(m.topic, m.payload);
                }
                Ok(Some(_)) => {}
                _ => panic!("no end marker under {base} within {timeout:?}"),
            }
        }
        let _ = reader.client.disconnect().await;
        tree
    }

    /// Collects messages on topics starting with `prefix` until `n` arrived.
    pub async fn collect(&mut self, prefix: &str, n: usize, timeout: Duration) -> Vec<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            let count = self.seen.iter().filter(|m| m.topic.starts_with(prefix)).count();
            if count >= n {
                let (taken, rest): (Vec<_>, Vec<_>) = self.seen.drain(..).partition(|m| m.topic.starts_with(prefix));
                self.seen = rest;
                return taken;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => self.seen.push(m),
                _ => panic!("timed out: {count} of {n} messages under {prefix}"),
            }
        }
    }
}
