//! `/metrics` (Prometheus text format) and `/healthz`.
//!
//! A scrape asks each cluster's PostgreSQL for its archiver state, all clusters at once and
//! each under [`PG_SCRAPE_TIMEOUT`], so a scrape answers within Prometheus' default 10 s
//! timeout even when a database hangs. Repository facts come from the background refresher
//! (see `jobs`): a scrape never waits for the store.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::{facts, metrics, Shared};

/// Bound of one cluster's PostgreSQL queries in a scrape (connect included).
const PG_SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .with_state(shared)
}

/// Serve until the agent stops.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let stop = shared.shutdown.clone();
    let served = axum::serve(listener, router(shared))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!("the metrics endpoint stopped: {e}");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics_page(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    scrape_postgres(&shared).await;
    let mut snapshot = shared.metrics_snapshot();
    snapshot.now = Some(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    let text = metrics::render(&snapshot);
    ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}

/// Read every cluster's archiver state into the metrics.
async fn scrape_postgres(shared: &Shared) {
    let cfg = shared.config();
    let reads = cfg.clusters.iter().map(|c| async move {
        let read =
            tokio::time::timeout(PG_SCRAPE_TIMEOUT, facts::read_postgres(&c.connection)).await;
        let read = match read {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "no answer within {} s",
                PG_SCRAPE_TIMEOUT.as_secs()
            )),
        };
        (c.name.as_str(), read)
    });
    for (name, read) in futures::future::join_all(reads).await {
        shared.with_cluster(name, |m| match read {
            Ok((stats, backlog)) => {
                if m.postgres_up == Some(false) {
                    tracing::info!(cluster = name, "metrics: PostgreSQL answers again");
                }
                m.postgres_up = Some(true);
                m.archiver = Some(stats);
                m.backlog = backlog;
            }
            Err(e) => {
                // Once per outage, not at every scrape.
                if m.postgres_up != Some(false) {
                    tracing::warn!(
                        cluster = name,
                        "metrics: cannot read the archiver state (synapse_backup_postgres_up is 0 until it answers): {e:#}"
                    );
                }
                m.postgres_up = Some(false);
                m.archiver = None;
                m.backlog = None;
            }
        });
    }
}
