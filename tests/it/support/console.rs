//! A client of the web console's API (`/ui/api/…`): keeps the session
//! cookie and CSRF token like a browser would.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

pub struct ConsoleClient {
    pub base: String,
    http: reqwest::Client,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
}

impl ConsoleClient {
    pub fn new(addr: SocketAddr) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { base: format!("http://{addr}"), http, cookie: None, csrf: None }
    }

    fn keep(&mut self, r: &reqwest::Response) {
        if let Some(c) = r.headers().get("set-cookie").and_then(|v| v.to_str().ok()) {
            self.cookie = c.split(';').next().map(str::to_owned).filter(|c| !c.ends_with('='));
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        r
    }

    /// `GET /ui/api/session`: takes the session (and CSRF token) it gives.
    pub async fn open(&mut self) -> Value {
        let r = self.request(reqwest::Method::GET, "/ui/api/session").send().await.unwrap();
        self.keep(&r);
        let v: Value = r.json().await.unwrap();
        self.csrf = v["csrf"].as_str().map(str::to_owned);
        v
    }

    /// `POST /ui/api/login`: the status; on success the session is kept.
    pub async fn login(&mut self, password: &str) -> u16 {
        let r = self
            .request(reqwest::Method::POST, "/ui/api/login")
            .json(&serde_json::json!({ "password": password }))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        self.keep(&r);
        if status == 200 {
            self.csrf = r.json::<Value>().await.unwrap()["csrf"].as_str().map(str::to_owned);
        }
        status
    }

    /// A GET: (status, body text).
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.request(reqwest::Method::GET, path).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// A GET of JSON: (status, body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.get_text(path).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A POST with `csrf` as the CSRF header (none: no header).
    pub async fn post_with(&self, path: &str, body: Value, csrf: Option<&str>) -> (u16, Value) {
        let mut r = self.request(reqwest::Method::POST, path).json(&body);
        if let Some(t) = csrf {
            r = r.header("x-csrf-token", t);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A POST with the session's CSRF token.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let csrf = self.csrf.clone();
        self.post_with(path, body, csrf.as_deref()).await
    }

    /// Waits for a live-view entry (from `/ui/api/history?{query}`) that
    /// matches `pred`; panics after `timeout`.
    pub async fn wait_entry(&self, query: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get(&format!("/ui/api/history?{query}")).await;
            assert_eq!(status, 200, "{body}");
            if let Some(e) = body["entries"].as_array().unwrap().iter().find(|e| pred(e)) {
                return e.clone();
            }
            assert!(Instant::now() < deadline, "no matching entry in time; history: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
