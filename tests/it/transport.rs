//! The connections' security: `mqtts://` with a private CA and a client
//! certificate, a login from a password file, `https://`/`wss://` to HA
//! behind a TLS front with a private CA, and the HA token never leaking into
//! any output of the binary (logs at trace level, MQTT, HTTP).
//!
//! Certificates and passwords are made here, in temp dirs; each test runs its
//! own Mosquitto with the listeners it needs (a plain loopback listener for
//! the test client beside the one the gateway must pass).

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::support::broker::free_port;
use crate::support::gateway::{http_get, write_config};
use crate::support::{Broker, FakeHa, Gateway, TestClient, PREFIX, TOKEN};

/// The binary installs rustls' ring provider in `main`; in-process gateways
/// need it installed by the test.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `name` on the PATH or in the usual places Mosquitto installs to.
fn find_tool(name: &str) -> Option<PathBuf> {
    if crate::support::broker::hidden() {
        return None;
    }
    let dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    dirs.into_iter()
        .chain(
            ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/opt/homebrew/sbin", "/opt/homebrew/bin"]
                .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `None` (after saying why) where the tool is missing outside CI; a panic in CI.
fn require(test: &str, tool: Option<PathBuf>, name: &str) -> Option<PathBuf> {
    if tool.is_none() {
        crate::support::skip::skip(test, &format!("{name} is not installed (apt-get install mosquitto)"));
    }
    tool
}

/// A Mosquitto with a config of the test's own (TLS listener, password file),
/// logging everything to a file the test can wait on.
struct SecureBroker {
    /// The listener the gateway must pass (TLS or password).
    secure_port: u16,
    /// A plain, anonymous loopback listener for the test client.
    plain_port: u16,
    log: PathBuf,
    child: Child,
}

impl SecureBroker {
    /// Starts `mosquitto -c <conf>` where `conf` is `listeners(plain_port,
    /// secure_port)`, and waits until both ports accept TCP connections.
    fn start(binary: &Path, dir: &Path, listeners: impl Fn(u16, u16) -> String) -> SecureBroker {
        let plain_port = free_port();
        let secure_port = std::iter::repeat_with(free_port).find(|p| *p != plain_port).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "persistence false\nset_tcp_nodelay true\nlog_dest stderr\nlog_type all\n{}",
                listeners(plain_port, secure_port)
            ),
        )
        .unwrap();
        let log = dir.join("mosquitto.log");
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start mosquitto");
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [plain_port, secure_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("mosquitto exited ({status}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
                }
                assert!(Instant::now() < deadline, "mosquitto did not listen on {port}:\n{}", read(&log));
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        SecureBroker { secure_port, plain_port, log, child }
    }

    /// Bytes logged so far: a mark to count new lines from.
    fn log_mark(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    fn log_since(&self, mark: u64) -> String {
        let mut f = std::fs::File::open(&self.log).unwrap();
        f.seek(SeekFrom::Start(mark)).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    }

    /// Waits until the log has `n` lines containing `needle` after `mark`.
    async fn wait_log(&self, mark: u64, needle: &str, n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log_since(mark);
            if log.lines().filter(|l| l.contains(needle)).count() >= n {
                return log;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {n}× {needle:?} in the broker log:\n{log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Writes `text` to `dir/name`.
fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A temp dir the broker can read even after dropping root privileges.
fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// A private CA.
fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf signed by `ca`: (cert PEM, key PEM).
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, cn: &str, sans: &[&str], server: bool) -> (String, String) {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn mqtts_with_a_private_ca_and_a_client_certificate() {
    const TEST: &str = "mqtts_client_cert";
    let Some(mosquitto) = require(TEST, find_tool("mosquitto"), "mosquitto") else { return };
    install_crypto();
    let dir = shared_tempdir();
    let d = dir.path();

    let ca = make_ca("mqtt-ha-gateway test CA");
    let (server_cert, server_key) = leaf(&ca, "localhost", &["localhost", "127.0.0.1"], true);
    let (client_cert, client_key) = leaf(&ca, "gateway", &[], false);
    let other_ca = make_ca("a CA that signed nothing here");
    let ca_file = write_file(d, "ca.pem", &ca.pem());
    let other_ca_file = write_file(d, "other-ca.pem", &other_ca.pem());
    let server_cert_file = write_file(d, "server.pem", &server_cert);
    let server_key_file = write_file(d, "server.key", &server_key);
    let client_cert_file = write_file(d, "client.pem", &client_cert);
    let client_key_file = write_file(d, "client.key", &client_key);

    let broker = SecureBroker::start(&mosquitto, d, |plain, tls| {
        format!(
            "allow_anonymous true\n\
             listener {plain} 127.0.0.1\n\
             listener {tls} 127.0.0.1\n\
             cafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n",
            ca_file.display(),
            server_cert_file.display(),
            server_key_file.display()
        )
    });
    let ha = FakeHa::start(TOKEN).await;
    let token_file = write_file(d, "token", TOKEN);
    let config = write_config(d, broker.plain_port, &ha.url(), &token_file);
    let mut client = TestClient::connect(
        broker.plain_port,
        "tls-tester",
        &[&format!("{PREFIX}/result/#"), &format!("{PREFIX}/status")],
    )
    .await;

    // The gateway checks the server's name against the URL's host: the
    // certificate carries `localhost`.
    let url = format!("mqtts://localhost:{}", broker.secure_port);
    let (ca_s, cert_s, key_s) =
        (ca_file.display().to_string(), client_cert_file.display().to_string(), client_key_file.display().to_string());
    let started = Instant::now();
    let gateway = Gateway::start(
        &config,
        &[
            ("MQTT__URL", &url),
            ("MQTT__CA_FILE", &ca_s),
            ("MQTT__CLIENT_CERT_FILE", &cert_s),
            ("MQTT__CLIENT_KEY_FILE", &key_s),
        ],
    )
    .await;
    client.expect(&format!("{PREFIX}/status"), Duration::from_secs(10), |m| &m.payload[..] == b"online").await;
    let result = client.set("light.kitchen", "ON", "light.turn_on").await;
    assert_eq!(result["ok"], true, "{result}");
    let calls = ha.calls();
    assert_eq!((calls[0].domain.as_str(), calls[0].service.as_str()), ("light", "turn_on"));
    assert_eq!(calls[0].body["entity_id"], "light.kitchen");
    assert_eq!(gateway.metric("mqtt_connected"), 1.0);
    // The broker knew the gateway by its certificate.
    let log = broker.log_since(0);
    assert!(
        log.lines().any(|l| l.contains("as gateway-under-test") && l.contains("u'gateway'")),
        "the broker took the certificate's CN as the username:\n{log}"
    );
    gateway.stop().await;
    eprintln!("{TEST}: mutual TLS connect + command in {:?}", started.elapsed());

    // Without a client certificate the broker refuses the handshake, again and again.
    let mark = broker.log_mark();
    let gateway = Gateway::start(&config, &[("MQTT__URL", &url), ("MQTT__CA_FILE", &ca_s)]).await;
    let log = broker.wait_log(mark, "peer did not return a certificate", 2, Duration::from_secs(10)).await;
    assert!(!log.contains("as gateway-under-test"), "connected without a client certificate:\n{log}");
    assert_eq!(gateway.metric("mqtt_connected"), 0.0);
    gateway.stop().await;

    // With a CA that did not sign the server's certificate the gateway refuses the broker.
    let mark = broker.log_mark();
    let other_s = other_ca_file.display().to_string();
    let gateway = Gateway::start(
        &config,
        &[
            ("MQTT__URL", &url),
            ("MQTT__CA_FILE", &other_s),
            ("MQTT__CLIENT_CERT_FILE", &cert_s),
            ("MQTT__CLIENT_KEY_FILE", &key_s),
        ],
    )
    .await;
    let log = broker.wait_log(mark, "unknown ca", 2, Duration::from_secs(10)).await;
    assert!(!log.contains("as gateway-under-test"), "connected to a broker its CA did not sign:\n{log}");
    assert_eq!(gateway.metric("mqtt_connected"), 0.0);
    gateway.stop().await;
    assert_eq!(ha.calls().len(), 1, "no command went through a refused connection");
}

#[tokio::test]
async fn a_broker_login_from_a_password_file() {
    const TEST: &str = "mqtt_password_file";
    let Some(mosquitto) = require(TEST, find_tool("mosquitto"), "mosquitto") else { return };
    let Some(passwd) = require(TEST, find_tool("mosquitto_passwd"), "mosquitto_passwd") else { return };
    let dir = shared_tempdir();
    let d = dir.path();
    let password = format!("pw-{:032x}", rand::random::<u128>());
    let broker_passwords = d.join("broker.passwd");
    let status = Command::new(&passwd)
        .args(["-b", "-c"])
        .arg(&broker_passwords)
        .args(["gateway-user", &password])
        .status()
        .expect("run mosquitto_passwd");
    assert!(status.success(), "mosquitto_passwd failed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&broker_passwords, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    let broker = SecureBroker::start(&mosquitto, d, |plain, secure| {
        format!(
            "per_listener_settings true\n\
             listener {secure} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
             listener {plain} 127.0.0.1\nallow_anonymous true\n",
            broker_passwords.display()
        )
    });
    let ha = FakeHa::start(TOKEN).await;
    let token_file = write_file(d, "token", TOKEN);
    let config = write_config(d, broker.secure_port, &ha.url(), &token_file);
    let mut client = TestClient::connect(
        broker.plain_port,
        "password-tester",
        &[&format!("{PREFIX}/result/#"), &format!("{PREFIX}/status")],
    )
    .await;

    // A trailing newline, as `echo` and editors write it.
    let password_file = write_file(d, "mqtt-password", &format!("{password}\n"));
    let password_s = password_file.display().to_string();
    let gateway =
        Gateway::start(&config, &[("MQTT__USERNAME", "gateway-user"), ("MQTT__PASSWORD_FILE", &password_s)]).await;
    client.expect(&format!("{PREFIX}/status"), Duration::from_secs(10), |m| &m.payload[..] == b"online").await;
    let result = client.set("light.kitchen", "ON", "light.turn_on").await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(ha.calls()[0].body["entity_id"], "light.kitchen");
    let log = broker.log_since(0);
    assert!(
        log.lines().any(|l| l.contains("as gateway-under-test") && l.contains("u'gateway-user'")),
        "the gateway logged in as gateway-user:\n{log}"
    );
    gateway.stop().await;

    // A wrong password: refused at every attempt, never connected.
    let wrong_file = write_file(d, "wrong-password", &format!("{password}-not\n"));
    let wrong_s = wrong_file.display().to_string();
    let mark = broker.log_mark();
    let gateway =
        Gateway::start(&config, &[("MQTT__USERNAME", "gateway-user"), ("MQTT__PASSWORD_FILE", &wrong_s)]).await;
    let log = broker.wait_log(mark, "not authori", 2, Duration::from_secs(10)).await;
    assert!(!log.lines().any(|l| l.contains("New client connected") && l.contains("as gateway-under-test")), "{log}");
    assert_eq!(gateway.metric("mqtt_connected"), 0.0);
    gateway.stop().await;
    assert_eq!(ha.calls().len(), 1, "no command went through a refused login");
}

/// 40 characters nobody else would print.
const PLANTED: &str = "planted-SECRET-7f3a9c2e5b8d41f0a6c3e9b7d";

/// `mqtt-ha-gateway <args> --config <config>` with trace-level JSON logs and
/// none of the caller's gateway variables.
fn gateway_command(args: &[&str], config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqtt-ha-gateway"));
    c.args(args).arg("--config").arg(config).stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MQTT_HA_GATEWAY_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "trace").env("MQTT_HA_GATEWAY_LOG__FORMAT", "json");
    c
}

/// Runs the binary to completion: its exit code, stdout and stderr.
async fn run_to_end(config: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = gateway_command(args, config);
    c.envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || c.output().expect("run the gateway binary")).await.unwrap();
    format!(
        "[{args:?} exit {:?}]\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The token as printed, its first 12 characters, and both hex-encoded (as a
/// websocket frame's payload is logged).
fn needles() -> Vec<String> {
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    vec![PLANTED.to_owned(), PLANTED[..12].to_owned(), hex(PLANTED), hex(&PLANTED[..12])]
}

/// Fails naming every line of `text` that holds the token in some form.
fn assert_no_token(what: &str, text: &str) {
    let needles = needles();
    let leaks: Vec<&str> = text.lines().filter(|l| needles.iter().any(|n| l.contains(n.as_str()))).collect();
    assert!(
        leaks.is_empty(),
        "{what}: {} line(s) hold the token (or its first 12 characters, or their hex):\n{}",
        leaks.len(),
        leaks.iter().map(|l| l.chars().take(700).collect::<String>()).collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test]
async fn the_token_never_appears_in_any_output() {
    let Some(broker) = Broker::start("token_never_leaks") else { return };
    let ha = FakeHa::start(PLANTED).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token_file = write_file(d, "token", &format!("{PLANTED}\n"));
    let config = write_config(d, broker.port, &ha.url(), &token_file);
    let mut spy = TestClient::connect(broker.port, "spy", &["#"]).await;
    let mut client =
        TestClient::connect(broker.port, "leak-tester", &[&format!("{PREFIX}/result/#"), &format!("{PREFIX}/status")])
            .await;

    let metrics_port = free_port();
    let (stdout, stderr) = (d.join("run.stdout"), d.join("run.stderr"));
    let mut gw = gateway_command(&["run"], &config)
        .env("MQTT_HA_GATEWAY_METRICS__LISTEN", format!("127.0.0.1:{metrics_port}"))
        // Unauthorized commands give up after this, not after a minute.
        .env("MQTT_HA_GATEWAY_QUEUE__MAX_AGE", "2s")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("start the gateway binary");
    let started = Instant::now();
    client.expect(&format!("{PREFIX}/status"), Duration::from_secs(10), |m| &m.payload[..] == b"online").await;
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();

    // A call that works, one denied, payloads that are invalid.
    let ok = client.set("light.kitchen", "ON", "light.turn_on").await;
    assert_eq!(ok["ok"], true, "{ok}");
    let denied = client.call("lock.unlock", r#"{"entity_id":"lock.front_door"}"#).await;
    assert_eq!(denied["error"], "service_denied", "{denied}");
    let invalid = client.set("light.kitchen", "BLINK", "light.set").await;
    assert_eq!(invalid["error"], "invalid_payload", "{invalid}");
    let invalid = client.call("light.turn_on", "not json").await;
    assert_eq!(invalid["error"], "invalid_json", "{invalid}");
    let get = client.get_result("light.nowhere").await;
    assert_eq!(get["status"], 404, "{get}");
    let (status, _) = http_get(metrics_addr, "/readyz").await;
    assert_eq!(status, 200);

    // HA stops accepting the token: the REST calls get 401 (and the
    // websocket is dropped, as when HA restarts).
    ha.set_token("other");
    ha.drop_websockets(false);
    let refused = client.set("light.hall", "ON", "light.turn_on").await;
    assert_eq!(refused["error"], "ha_unauthorized", "{refused}");
    let refused = client.call("switch.turn_off", r#"{"entity_id":"switch.plug"}"#).await;
    assert_eq!(refused["error"], "ha_unauthorized", "{refused}");
    assert!(ha.unauthorized() >= 1, "HA refused the token");
    let mut http = String::new();
    for path in ["/metrics", "/healthz", "/readyz", "/nothing-here"] {
        let (status, body) = http_get(metrics_addr, path).await;
        http.push_str(&format!("GET {path} {status}\n{body}\n"));
    }
    assert!(http.contains("ha_token_accepted"), "/readyz names the refused token:\n{http}");

    // Stop it: SIGTERM, drain, exit 0.
    let status = Command::new("kill").args(["-TERM", &gw.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), tokio::task::spawn_blocking(move || gw.wait().unwrap()))
        .await
        .expect("the gateway exits within 20 s after SIGTERM")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    spy.expect(&format!("{PREFIX}/status"), Duration::from_secs(10), |m| &m.payload[..] == b"offline").await;
    let published = spy.collect("", 0, Duration::from_secs(1)).await;
    assert!(published.len() >= 5, "the spy saw the gateway's messages: {}", published.len());
    let mqtt: String =
        published.iter().map(|m| format!("{} {}\n", m.topic, String::from_utf8_lossy(&m.payload))).collect();
    let logs = format!("{}{}", read(&stdout), read(&stderr));
    assert!(logs.lines().count() > 20, "trace logging was on:\n{logs}");
    eprintln!("token_never_leaks: run phase {:?}, {} log lines", started.elapsed(), logs.lines().count());

    // `check`, offline and online, with the token from the file and from the
    // environment, accepted and refused; and a config error beside the token.
    let env_config = d.join("env-token.toml");
    let text: String =
        read(&config).lines().filter(|l| !l.starts_with("token_file")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&env_config, text).unwrap();
    let token_env = [("MQTT_HA_GATEWAY_HOME_ASSISTANT__TOKEN", PLANTED)];
    let mut checks = String::new();
    checks.push_str(&run_to_end(&config, &["check", "--online"], &[]).await); // refused
    ha.set_token(PLANTED);
    checks.push_str(&run_to_end(&config, &["check", "--online"], &[]).await);
    checks.push_str(&run_to_end(&env_config, &["check"], &token_env).await);
    checks.push_str(&run_to_end(&env_config, &["check", "--online"], &token_env).await);
    checks.push_str(&run_to_end(&config, &["check"], &token_env).await); // token and token_file: an error
    ha.set_token("other");
    checks.push_str(&run_to_end(&env_config, &["check", "--online"], &token_env).await);
    assert!(checks.contains("accepts the token"), "{checks}");
    assert!(checks.contains("the token was refused"), "{checks}");
    assert!(checks.contains("not both"), "{checks}");

    // Not vacuous: HA got the token, in the Authorization header.
    let calls = ha.calls();
    assert!(
        calls.iter().any(|c| c.authorization.as_deref() == Some(&format!("Bearer {PLANTED}"))),
        "HA received the planted token"
    );
    assert_no_token("the published MQTT messages", &mqtt);
    assert_no_token("/metrics, /healthz, /readyz", &http);
    assert_no_token("the check outputs", &checks);
    assert_no_token("the gateway's stdout/stderr (RUST_LOG=trace, JSON)", &logs);
}

/// A TLS front for the fake HA, as a reverse proxy (nginx, Caddy) with a
/// certificate from a private CA would be: decrypts and relays to `upstream`.
async fn tls_front(
    upstream: std::net::SocketAddr,
    cert_pem: &str,
    key_pem: &str,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    install_crypto();
    let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&handshakes);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else { return };
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            });
        }
    });
    (addr, handshakes)
}

#[tokio::test]
async fn https_and_wss_to_home_assistant_with_a_private_ca() {
    let Some(rig) = crate::support::rig("https_private_ca").await else { return };
    let ca = make_ca("Home CA");
    let (cert, key) = leaf(&ca, "homeassistant.local", &["localhost"], true);
    let ca_file = write_file(rig.dir.path(), "ca.pem", &ca.pem());
    let (front, handshakes) = tls_front(rig.ha.addr, &cert, &key).await;
    rig.ha.set_state("light.kitchen", "off", serde_json::json!({}));
    let url = format!("https://localhost:{}", front.port());
    let gateway = Gateway::start(
        &rig.config,
        &[("HOME_ASSISTANT__URL", &url), ("HOME_ASSISTANT__CA_FILE", ca_file.to_str().unwrap())],
    )
    .await;
    let mut client = TestClient::connect(rig.broker.port, "https-client", &[&format!("{PREFIX}/#")]).await;
    // REST over https: a call goes through and HA sees it.
    let r = client.call("light.turn_on", r#"{"entity_id":"light.kitchen"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(rig.ha.calls().len(), 1);
    // The websocket over wss: the mirror's snapshot and live updates arrive.
    client.expect(&format!("{PREFIX}/state/light/kitchen"), Duration::from_secs(10), |_| true).await;
    assert!(rig.ha.ws_connections() >= 1, "the mirror connected over wss");
    gateway.stop().await;

    // Without the CA the certificate is refused: nothing reaches HA, the
    // command fails at once (no retry can help) and the metric says why.
    let gateway = Gateway::start(&rig.config, &[("HOME_ASSISTANT__URL", &url)]).await;
    let r = client.call("light.turn_off", r#"{"entity_id":"light.kitchen"}"#).await;
    assert_eq!(r["error"], "ha_unavailable", "{r}");
    assert_eq!(gateway.metric(r#"ha_calls_total{class="tls"}"#), 1.0);
    assert_eq!(rig.ha.calls().len(), 1, "the untrusted front was never sent a call");
    // The mirror keeps trying (with backoff) but says `offline` once, not
    // on every attempt.
    let before = handshakes.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    while handshakes.load(std::sync::atomic::Ordering::SeqCst) < before + 8 {
        assert!(Instant::now() < deadline, "no more attempts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let statuses: Vec<_> = client.take(&format!("{PREFIX}/ha_status")).into_iter().map(|m| m.payload).collect();
    assert_eq!(statuses.iter().filter(|p| &p[..] == b"offline").count(), 2, "once per gateway: {statuses:?}");
    gateway.stop().await;
}
