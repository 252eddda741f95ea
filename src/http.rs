//! The HTTP surface: `router(state)` serves `/healthz` (the scheduler loop is ticking), `/readyz` (config
//! loaded, credentials resolved, first AWS call answered), `/metrics` (Prometheus text) and `/status` (JSON per
//! policy/schedule). It only reads shared state; it never triggers work. [`serve`] is the port's accept loop:
//! a cap on open connections (an excess one is closed at once, not queued), a header-read timeout that also
//! closes idle keep-alive connections, a bound on a connection's life, and a shutdown that ends within a fixed
//! time however far a client got with its request — so the port cannot take the descriptors AWS calls need, nor
//! hold up a stop.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use serde_json::json;

use crate::metrics::Metrics;
use crate::status::{Health, StatusBoard};

#[derive(Clone)]
pub struct AppState {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) status: Arc<StatusBoard>,
    pub(crate) health: Arc<Health>,
    /// The loop ticks at least once a second; this much silence means it is stuck.
    pub(crate) stall_after: Duration,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state)
}

async fn healthz(State(s): State<AppState>) -> Response {
    match s.health.heartbeat_age(Utc::now()) {
        Some(age) if age <= s.stall_after.as_secs_f64() => (
            StatusCode::OK,
            format!("ok: scheduler ticked {age:.1}s ago\n"),
        )
            .into_response(),
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stalled: scheduler last ticked {age:.1}s ago\n"),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: scheduler has not ticked yet\n",
        )
            .into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let h = &s.health;
    let body = json!({
        "ready": h.ready(),
        "config_loaded": h.config_loaded.load(Relaxed),
        "credentials_resolved": h.credentials_resolved.load(Relaxed),
        "aws_reachable": h.aws_reachable.load(Relaxed),
    });
    let code = if h.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(Utc::now()),
    )
        .into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    let now = Utc::now();
    let staleness = s.metrics.staleness(now);
    let mut policies = serde_json::Map::new();
    for (policy, schedules) in s.status.snapshot() {
        let mut out = serde_json::Map::new();
        for (name, st) in schedules {
            let mut v = serde_json::to_value(&st).expect("status serializes");
            if let Some((age, unprotected)) = staleness.get(&(policy.clone(), name.clone())) {
                v["staleness_seconds"] = json!(age);
                v["unprotected_volumes"] = json!(unprotected);
            }
            out.insert(name, v);
        }
        policies.insert(policy, serde_json::Value::Object(out));
    }
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": now,
        "healthy": s.health.heartbeat_age(now).is_some_and(|a| a <= s.stall_after.as_secs_f64()),
        "ready": s.health.ready(),
        "policies": policies,
    }))
    .into_response()
}

/// Open HTTP connections at most. The port serves a scraper, a health check and the odd operator: a few at a
/// time. 64 leaves more than 900 of even a 1,024 descriptor limit to AWS calls (at most
/// `daemon.max-concurrent-aws-calls` ≤ 256 connections), logs and the lock files.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers, counted from the connection's start or the previous response:
/// also the idle keep-alive timeout.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is asked to close after this long, whatever it is doing (a client that never reads its response).
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// After a stop or the end of its life, how long a connection may take to finish the response it is writing.
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves `app` on `listener` until `stop`; then stops accepting, lets each connection finish its current
/// response within [`SHUTDOWN_TIMEOUT`] and drops the rest. Returns when every connection is gone.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    metrics: Arc<Metrics>,
    stop: tokio_util::sync::CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (EMFILE) or a connection reset before accept: accepting again at once
                // would spin. The backlog waits in the kernel meanwhile, holding none of ours.
                metrics.http_refused("accept-error");
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.http_refused("connection-cap");
            drop(stream);
            continue;
        };
        connections.spawn(connection(stream, app.clone(), stop.clone(), permit));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    stop: tokio_util::sync::CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
    }
    // Closes an idle connection at once and one mid-response after the response; a half-sent request is
    // dropped with the timeout.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn state() -> AppState {
        AppState {
            metrics: Arc::new(Metrics::new()),
            status: Arc::new(StatusBoard::default()),
            health: Arc::new(Health::default()),
            stall_after: Duration::from_secs(30),
        }
    }

    async fn get(s: &AppState, path: &str) -> (StatusCode, String) {
        let resp = router(s.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_follows_the_heartbeat() {
        let s = state();
        assert_eq!(get(&s, "/healthz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        s.health.beat(Utc::now());
        assert_eq!(get(&s, "/healthz").await.0, StatusCode::OK);
        s.health.beat(Utc::now() - chrono::Duration::seconds(60));
        let (code, body) = get(&s, "/healthz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("stalled"), "{body}");
    }

    #[tokio::test]
    async fn ready_needs_every_milestone() {
        use std::sync::atomic::Ordering::Relaxed;
        let s = state();
        s.health.config_loaded.store(true, Relaxed);
        s.health.credentials_resolved.store(true, Relaxed);
        let (code, body) = get(&s, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"aws_reachable\":false"), "{body}");
        s.health.aws_reachable.store(true, Relaxed);
        assert_eq!(get(&s, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn status_and_metrics_render() {
        let s = state();
        s.status.register("prod", "daily", "30 4 * * *");
        s.status.set_next("prod", "daily", Some(Utc::now()));
        let (code, body) = get(&s, "/status").await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["policies"]["prod"]["daily"]["cron"], "30 4 * * *");
        let (code, body) = get(&s, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("snapwarden_build_info"), "{body}");
    }
}
