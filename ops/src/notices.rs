//! The notices' outbox: every notice of an application's progress
//! (`onecard_engine::notice`) posted to the configured webhook (the campus's
//! enterprise WeChat or mail gateway), in order, at least once.
//!
//! Each notice is posted as its JSON with an `Idempotency-Key` header of its id; a
//! 2xx answer counts as delivered, and the cursor of the last delivered notice is
//! written (synced, through the store's door, so a cell's new leader goes on where the
//! old one stopped). A notice whose post fails is posted again after a backoff that
//! doubles from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]; nothing after it goes first. A
//! crash between a post and its cursor posts that notice again: the receiver tells a
//! repeat by its id.

use std::time::Duration;

use onecard_engine::notice::Notice;
use onecard_engine::workflow::Workflows;
use tokio::sync::watch;

/// Notices read per round.
pub const NOTICES_PER_ROUND: usize = 100;
/// How often the outbox looks for new notices when it has delivered them all.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// The first wait after a failed post; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait between tries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// One post may take this long.
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a round stopped short.
#[derive(Debug, thiserror::Error)]
enum OutboxError {
    #[error("reading or writing the outbox: {0}")]
    Store(#[from] onecard_engine::workflow::WorkflowError),
    #[error("posting notice {id}: {reason}")]
    Post { id: u64, reason: String },
}

/// Delivers notices to `url` until `shutdown` turns true.
pub async fn run(workflows: Workflows, url: String, mut shutdown: watch::Receiver<bool>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(POST_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let mut backoff = BACKOFF_MIN;
    tracing::info!(%url, "notices go to the webhook");
    loop {
        let (workflows, agent, target) = (workflows.clone(), agent.clone(), url.clone());
        let round = tokio::task::spawn_blocking(move || deliver(&workflows, &agent, &target)).await;
        let wait = match round {
            Ok(Ok(0)) => {
                backoff = BACKOFF_MIN;
                POLL_EVERY
            }
            Ok(Ok(_)) => {
                backoff = BACKOFF_MIN;
                Duration::ZERO
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis(), "notice not delivered");
                let wait = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            }
            Err(error) => {
                tracing::error!(%error, "the notice outbox's round failed");
                BACKOFF_MAX
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Posts the notices after the cursor, moving the cursor past each; returns how many.
fn deliver(workflows: &Workflows, agent: &ureq::Agent, url: &str) -> Result<usize, OutboxError> {
    let from = workflows.delivered_through()?;
    let notices = workflows.notices_after(from, NOTICES_PER_ROUND)?;
    for notice in &notices {
        post(agent, url, notice)?;
        workflows.set_delivered_through(notice.id)?;
    }
    Ok(notices.len())
}

fn post(agent: &ureq::Agent, url: &str, notice: &Notice) -> Result<(), OutboxError> {
    let failed = |reason: String| OutboxError::Post { id: notice.id, reason };
    let answer = agent
        .post(url)
        .header("Idempotency-Key", &notice.id.to_string())
        .send_json(notice)
        .map_err(|error| failed(error.to_string()))?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(failed(format!("answered {}", answer.status())))
    }
}
