//! Home Assistant failing: retries, Retry-After, timeouts of non-idempotent
//! calls, permanent errors and a refused token.

use std::time::Duration;

use serde_json::json;

use crate::support::{setup, Reply, PREFIX};

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let Some(mut env) = setup("retry_5xx", &[]).await else {
        return;
    };
    env.wait_online().await;
    env.ha.script([Reply::status(500), Reply::status(503)]);
    let r = env.client.call("light.turn_on", r#"{"entity_id":"light.a"}"#).await;
    assert_eq!(r["ok"], true);
    assert_eq!(env.ha.calls().len(), 3);
    assert_eq!(env.gateway.metric("retries_total"), 2.0);
    assert_eq!(env.gateway.metric(r#"ha_calls_total{class="5xx"}"#), 2.0);
    env.gateway.stop().await;
}

#[tokio::test]
async fn retries_stop_at_max_attempts() {
    let Some(mut env) = setup("give_up", &[("HOME_ASSISTANT__MAX_ATTEMPTS", "3")]).await else {
        return;
    };
    env.wait_online().await;
    env.ha.script((0..10).map(|_| Reply::status(502)));
    let r = env.client.call("switch.turn_on", r#"{"entity_id":"switch.a","correlation":"x"}"#).await;
    assert_eq!(r, json!({"ok":false,"status":502,"changed":[],"error":"ha_unavailable","correlation":"x"}));
    assert_eq!(env.ha.calls().len(), 3);
    assert_eq!(env.gateway.metric(r#"commands_total{outcome="failed",reason="ha_unavailable"}"#), 1.0);
    // Given up: also on the dead-letter topic, for inspection and replay.
    let dead = env.client.expect(&format!("{PREFIX}/dead_letter"), Duration::from_secs(10), |_| true).await;
    assert!(!dead.retain);
    assert_eq!(
        dead.json(),
        json!({"topic": format!("{PREFIX}/call/switch/turn_on"), "payload": r#"{"entity_id":"switch.a","correlation":"x"}"#,
               "reason": "ha_unavailable", "attempts": 3, "status": 502, "correlation": "x"})
    );
    assert_eq!(env.gateway.metric("dead_letters_total"), 1.0);
    env.gateway.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let Some(mut env) = setup("retry_after", &[]).await else {
        return;
    };
    env.wait_online().await;
    env.ha.script([Reply { retry_after: Some(1), ..Reply::status(429) }]);
    assert_eq!(env.client.call("light.turn_on", r#"{"entity_id":"light.a"}"#).await["ok"], true);
    let calls = env.ha.calls();
    assert_eq!(calls.len(), 2);
    assert!(calls[1].at - calls[0].at >= Duration::from_millis(990), "waited {:?}", calls[1].at - calls[0].at);
    env.gateway.stop().await;
}

#[tokio::test]
async fn a_429_holds_every_call_not_only_the_refused_one() {
    let Some(mut env) = setup("retry_after_all", &[]).await else {
        return;
    };
    env.wait_online().await;
    env.ha.script([Reply { retry_after: Some(1), ..Reply::status(429) }]);
    env.client.publish(&format!("{PREFIX}/call/light/turn_on"), r#"{"entity_id":"light.a"}"#).await;
    env.gateway.wait_metric(r#"ha_calls_total{class="429"}"#, Duration::from_secs(10), |v| v == 1.0).await;
    // Another entity, not waiting on light.a's order, still waits for the pause.
    let r = env.client.call("light.turn_on", r#"{"entity_id":"light.b"}"#).await;
    assert_eq!(r["ok"], true);
    let calls = env.ha.wait_calls(Duration::from_secs(10), "both calls done", |c| c.len() == 3).await;
    let b = calls.iter().find(|c| c.body["entity_id"] == "light.b").unwrap();
    assert!(b.at - calls[0].at >= Duration::from_millis(990), "light.b went {:?} after the 429", b.at - calls[0].at);
    env.gateway.stop().await;
}

#[tokio::test]
async fn while_ha_is_unreachable_commands_wait_until_they_expire_without_spending_attempts() {
    let Some(mut env) = setup("unreachable", &[("HOME_ASSISTANT__MAX_ATTEMPTS", "1"), ("QUEUE__MAX_AGE", "2s")]).await
    else {
        return;
    };
    env.wait_online().await;
    env.ha.stop();
    let r = env.client.call("switch.turn_on", r#"{"entity_id":"switch.a","correlation":"u"}"#).await;
    assert_eq!(r["error"], "expired", "waited for HA until queue.max_age, not given up after one attempt: {r}");
    let dead = env.client.expect(&format!("{PREFIX}/dead_letter"), Duration::from_secs(10), |_| true).await;
    let dead = dead.json();
    assert_eq!(dead["reason"], "expired");
    assert!(dead["attempts"].as_u64().unwrap() >= 2, "HA was probed again while it was down: {dead}");
    assert!(env.gateway.metric(r#"ha_calls_total{class="connect"}"#) >= 2.0);
    assert_eq!(env.gateway.metric("ha_up"), 0.0);
    env.gateway.stop().await;
}

/// While HA starts, its REST API answers before every integration has
/// registered its services: a call then gets a 400 ("service not found",
/// in 2024.3 a bare "400: Bad Request"). That is retried until HA says it
/// is running; once it is, a 400 is final again.
#[tokio::test]
async fn a_bad_request_while_home_assistant_starts_is_retried() {
    let Some(mut env) = setup("starting", &[]).await else {
        return;
    };
    env.wait_online().await;
    env.ha.set_core_state("STARTING");
    env.ha.script([Reply::status(400), Reply::status(400)]);
    let r = env.client.call("light.turn_on", r#"{"entity_id":"light.a"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(env.ha.calls().len(), 3);
    assert_eq!(env.gateway.metric("retries_total"), 2.0);

    env.ha.set_core_state("RUNNING");
    env.ha.script([Reply::status(400)]);
    let r = env.client.call("light.turn_on", r#"{"entity_id":"light.a"}"#).await;
    assert_eq!((r["ok"].clone(), r["error"].clone()), (json!(false), json!("ha_error")), "{r}");
    assert_eq!(env.ha.calls().len(), 4);
    env.gateway.stop().await;
}

#[tokio::test]
async fn bad_requests_are_final() {
    let Some(mut env) = setup("bad_request", &[]).await else {
        return;
    };
    env.wait_online().await;
    env.ha.script([Reply::status(400)]);
    let r = env.client.call("light.turn_on", r#"{"entity_id":"light.a","brightness":"abc"}"#).await;
    assert_eq!(
        (r["ok"].clone(), r["status"].clone(), r["error"].clone()),
        (json!(false), json!(400), json!("ha_error"))
    );
    assert_eq!(env.ha.calls().len(), 1);
    env.gateway.stop().await;
}

#[tokio::test]
async fn a_timed_out_toggle_is_not_resent_but_an_idempotent_call_is() {
    let Some(mut env) =
        setup("timeouts", &[("HOME_ASSISTANT__REQUEST_TIMEOUT", "300ms"), ("HOME_ASSISTANT__MAX_ATTEMPTS", "2")]).await
    else {
        return;
    };
    env.wait_online().await;
    env.ha.script([Reply { delay: Duration::from_secs(1), ..Reply::status(200) }]);
    let r = env.client.set("light.a", "TOGGLE", "light.toggle").await;
    assert_eq!(r["error"], "ha_timeout");
    env.ha.wait_calls(Duration::from_secs(5), "the toggle to land", |c| c.len() == 1).await;

    env.ha.script([Reply { delay: Duration::from_secs(1), ..Reply::status(200) }]);
    let r = env.client.set("light.b", "ON", "light.turn_on").await;
    assert_eq!(r["ok"], true, "turn_on is idempotent: re-sent after the timeout");
    let calls = env.ha.wait_calls(Duration::from_secs(5), "both turn_on attempts", |c| c.len() == 3).await;
    assert_eq!(calls.iter().filter(|c| c.service == "toggle").count(), 1, "the toggle was sent once");
    env.gateway.stop().await;
}

#[tokio::test]
async fn a_refused_token_stops_sending_until_the_token_file_changes() {
    let Some(mut env) = setup(
        "unauthorized",
        &[("QUEUE__MAX_AGE", "3s"), ("HOME_ASSISTANT__AUTH_BACKOFF", "60s"), ("QUEUE__CONCURRENCY", "1")],
    )
    .await
    else {
        return;
    };
    env.wait_online().await;
    env.gateway.wait_metric("ha_up", Duration::from_secs(5), |v| v == 1.0).await;
    // Both the probe and the mirror's first snapshot are done before the token changes.
    env.gateway.wait_metric("ha_websocket_connected", Duration::from_secs(5), |v| v == 1.0).await;
    env.ha.set_token("rotated-token");
    for n in 0..20 {
        env.client
            .publish(&format!("{PREFIX}/call/light/turn_on"), json!({"entity_id": format!("light.l{n}")}).to_string())
            .await;
    }
    let results = env.client.collect(&format!("{PREFIX}/result/"), 20, Duration::from_secs(15)).await;
    assert!(results.iter().all(|m| m.json()["ok"] == false));
    assert!(results.iter().all(|m| ["ha_unauthorized", "expired"].contains(&m.json()["error"].as_str().unwrap())));
    // HA counts each 401 as a failed login: the gateway must not hammer it.
    // One call in flight at a time here, so exactly one was refused.
    assert_eq!(env.ha.unauthorized(), 1, "refused requests");
    let (status, body) = env.gateway.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("ha_token_accepted"), "{body}");

    // The operator puts the new token in place: sending resumes without a restart.
    std::fs::write(&env.token_file, "rotated-token\n").unwrap();
    assert_eq!(env.client.call("light.turn_on", r#"{"entity_id":"light.z"}"#).await["ok"], true);
    let calls = env.ha.calls();
    assert_eq!(calls.last().unwrap().authorization.as_deref(), Some("Bearer rotated-token"));
    env.gateway.wait_metric("ha_up", Duration::from_secs(5), |v| v == 1.0).await;
    env.gateway.stop().await;
}
