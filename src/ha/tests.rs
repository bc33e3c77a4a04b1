//! The client against a tiny local server: what it reads of a body.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use secrecy::SecretString;

use super::*;

const CHUNK: usize = 64 * 1024;
const ENDLESS: usize = 100 * 1024 * 1024;

/// What the server sent of a body, and whether the client hung up before the end.
#[derive(Default)]
struct Sent {
    bytes: AtomicUsize,
    dropped: AtomicBool,
}

/// Marks the body dropped when hyper stops polling it (the client is gone).
struct DropFlag(Arc<Sent>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.dropped.store(true, Ordering::SeqCst);
    }
}

/// A body of `ENDLESS` bytes in chunks, counting what left.
fn endless_body(sent: Arc<Sent>) -> Body {
    let flag = DropFlag(Arc::clone(&sent));
    let chunks = futures_util::stream::unfold((flag, 0usize), |(flag, n)| async move {
        if n >= ENDLESS {
            return None;
        }
        flag.0.bytes.fetch_add(CHUNK, Ordering::SeqCst);
        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; CHUNK])), (flag, n + CHUNK)))
    });
    Body::from_stream(chunks)
}

/// Serves `respond` for every request on 127.0.0.1; returns a client for it.
async fn serve(respond: impl Fn() -> Response + Clone + Send + Sync + 'static) -> HaClient {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || {
        let respond = respond.clone();
        async move { respond() }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut raw = crate::config::RawConfig::default();
    raw.home_assistant.url = format!("http://{addr}");
    raw.home_assistant.token = Some(SecretString::from("t"));
    let config = crate::config::validate(raw).expect("a valid test config");
    let (_tx, rx) = tokio::sync::watch::channel(SecretString::from("t"));
    HaClient::new(&config.home_assistant, AuthGate::new(config.home_assistant.auth_backoff, rx)).unwrap()
}

/// Waits until `cond` holds, or fails after `deadline`.
async fn wait_for(what: &str, deadline: Duration, cond: impl Fn() -> bool) {
    tokio::time::timeout(deadline, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within {deadline:?}"));
}

#[tokio::test]
async fn an_endless_body_is_cut_off_at_the_cap() {
    let sent = Arc::new(Sent::default());
    let s = Arc::clone(&sent);
    let client = serve(move || Response::new(endless_body(Arc::clone(&s)))).await;
    let e = tokio::time::timeout(Duration::from_secs(60), client.get_states()).await.unwrap().unwrap_err();
    assert_eq!(e.kind, HaErrorKind::InvalidResponse, "{e}");
    assert_eq!(e.message, format!("response body over {MAX_BODY} bytes"));
    wait_for("the server sees the client hang up", Duration::from_secs(10), || sent.dropped.load(Ordering::SeqCst))
        .await;
    let bytes = sent.bytes.load(Ordering::SeqCst);
    assert!(bytes < ENDLESS, "the client read no further than the cap: {bytes} bytes sent");
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused_before_reading() {
    let client = serve(|| {
        let mut r =
            Response::new(Body::from_stream(futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>()));
        r.headers_mut().insert(header::CONTENT_LENGTH, (MAX_BODY + 1).into());
        r
    })
    .await;
    // The body never comes: only the Content-Length can have refused it.
    let e = tokio::time::timeout(Duration::from_secs(5), client.get_states()).await.unwrap().unwrap_err();
    assert_eq!(e.kind, HaErrorKind::InvalidResponse, "{e}");
}

#[tokio::test]
async fn an_error_keeps_its_kind_whatever_its_body() {
    let sent = Arc::new(Sent::default());
    let s = Arc::clone(&sent);
    let client = serve(move || {
        let mut r = Response::new(endless_body(Arc::clone(&s)));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r
    })
    .await;
    let e = tokio::time::timeout(Duration::from_secs(10), client.probe()).await.unwrap().unwrap_err();
    assert_eq!((e.kind, e.status), (HaErrorKind::Server, Some(502)), "{e}");
    assert_eq!(e.message.len(), 200, "the message is the body's start");
    wait_for("the server sees the client hang up", Duration::from_secs(10), || sent.dropped.load(Ordering::SeqCst))
        .await;
    assert!(sent.bytes.load(Ordering::SeqCst) < ENDLESS);
}

/// (HA's 2xx body) → (changed entity ids, service_response) or an invalid response.
#[test]
fn call_answers_with_and_without_a_response() {
    use serde_json::json;
    let table = [
        (json!([{"entity_id": "light.a"}]), Some((vec!["light.a"], None))),
        (
            json!({"changed_states": [], "service_response": {"weather.home": {"forecast": []}}}),
            Some((vec![], Some(json!({"weather.home": {"forecast": []}})))),
        ),
        (json!({"changed_states": [{"entity_id": "light.b"}]}), Some((vec!["light.b"], None))),
        (json!({"service_response": {}}), None),
        (json!("ok"), None),
    ];
    for (body, expected) in table {
        let got = call_response(200, body.to_string().as_bytes()).ok().map(|r| {
            let ids: Vec<String> = r.changed.iter().map(|s| s.entity_id().unwrap().to_owned()).collect();
            (ids, r.response)
        });
        let expected = expected.map(|(ids, r)| (ids.into_iter().map(str::to_owned).collect::<Vec<_>>(), r));
        assert_eq!(got, expected, "{body}");
    }
    for (body, message) in [("[1,", "response is not JSON"), ("5", "response is not a list of states")] {
        assert_eq!(call_response(200, body.as_bytes()).unwrap_err().message, message, "{body}");
    }
}
