//! openraft's own conformance suite for a log store and a state machine, run against
//! the cell's: votes, appends, reads, truncation, purging, the applied state and its
//! membership, snapshots built on one node and installed on another.

use onecard_cluster::log_store::LogStore;
use onecard_cluster::{NodeId, StateMachine, TypeConfig};
use onecard_tests::TempDir;
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

struct Fresh;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Fresh {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new("raft-suite");
        let failed = |error: onecard_cluster::ClusterError| {
            let source = openraft::AnyError::error(error.to_string());
            StorageError::from(openraft::StorageIOError::<NodeId>::write(&source))
        };
        let log = LogStore::open(&dir.path().join("raft-log")).map_err(failed)?;
        let state_machine = StateMachine::open(dir.path(), 1).map_err(failed)?;
        Ok((dir, log, state_machine))
    }
}

#[test]
fn the_log_store_and_state_machine_pass_openraft_s_suite() {
    Suite::test_all(Fresh).expect("every case of the suite passes");
}
