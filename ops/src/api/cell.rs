//! The cell's membership, on its leader: add a node (as a learner that catches up,
//! then a voter), remove one. Admin only, audited. docs/OPERATIONS.md, "Replacing a
//! dead node".

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use onecard_cluster::Node;
use onecard_cluster::openraft::ChangeMembers;

use super::auth::{Caller, Permission};
use super::{ApiError, ApiResult, AppState};
use crate::config::MemberSettings;

/// How long a new node may take to catch up (a snapshot of the whole store, then the
/// log) before the request gives up; the node goes on catching up as a learner.
const CATCH_UP_MAX: Duration = Duration::from_secs(600);

/// The membership routes, for the leader's admin API.
pub fn routes(api: AppState, node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/cluster/members", post(add))
        .route("/api/cluster/members/{id}", delete(remove))
        .layer(Extension(node))
        .with_state(api)
}

fn refused(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "cell_change_refused", message)
}

async fn add(
    State(state): State<AppState>,
    Extension(node): Extension<Arc<Node>>,
    caller: Caller,
    // The body is a member as the config's `[[cluster.members]]` table gives one.
    Json(member): Json<MemberSettings>,
) -> ApiResult<serde_json::Value> {
    caller.require(&state, Permission::CellWrite)?;
    let target = format!("node {}", member.id);
    let detail =
        format!("cluster {} terminals {} admin {}", member.cluster, member.terminals, member.admin);
    let metrics = node.metrics();
    let outcome = if metrics.membership_config.membership().get_node(&member.id).is_some() {
        Err(refused(format!("{target} is a member already; a replacement takes a new id")))
    } else {
        let address = member.address();
        let raft = node.raft();
        match tokio::time::timeout(CATCH_UP_MAX, raft.add_learner(member.id, address, true)).await {
            Err(_) => Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "catching_up",
                format!(
                    "{target} is a learner, still catching up after {CATCH_UP_MAX:?}; send this again to make it a voter once it has"
                ),
            )),
            Ok(Err(error)) => Err(refused(format!("adding {target}: {error}"))),
            Ok(Ok(_)) => raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([member.id])), false)
                .await
                .map(|_| ())
                .map_err(|error| refused(format!("making {target} a voter: {error}"))),
        }
    };
    caller.audited(&state, "cell.add_member", &target, &detail, || outcome)?;
    Ok(Json(serde_json::json!({ "added": member.id })))
}

async fn remove(
    State(state): State<AppState>,
    Extension(node): Extension<Arc<Node>>,
    caller: Caller,
    Path(id): Path<u64>,
) -> ApiResult<serde_json::Value> {
    caller.require(&state, Permission::CellWrite)?;
    let target = format!("node {id}");
    let voters: BTreeSet<u64> = node.metrics().membership_config.voter_ids().collect();
    let outcome = if id == node.id() {
        Err(refused(
            "this node leads the cell: stop it, and remove it on the node elected after it",
        ))
    } else if !voters.contains(&id) {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_member",
            format!("{target} is not a voter"),
        ))
    } else if voters.len() <= 2 {
        Err(refused("a cell keeps at least two voters; add the replacement first"))
    } else {
        node.raft()
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(|error| refused(format!("removing {target}: {error}")))
    };
    caller.audited(&state, "cell.remove_member", &target, "", || outcome)?;
    Ok(Json(serde_json::json!({ "removed": id })))
}
