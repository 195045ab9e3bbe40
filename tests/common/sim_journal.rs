//! Journal fixtures for tests that open a manager over the simulated
//! provider: the fixed clock `T0`, op ids from numbers, the records that
//! register provider `p` (kind `sim`), and a config whose only factory is a
//! given simulated provider. Included by path (`#[path]`), so a test binary
//! takes only this and not the real-provider helpers of `common`.
#![allow(dead_code)]

use std::collections::BTreeMap;

use uuid::Uuid;
use volmgr::manager::ManagerConfig;
use volmgr::provider::sim::SimProvider;
use volmgr::state::{Action, Done, OpResult, ProviderRecord, Record};

/// The time of every fixture record.
pub const T0: u64 = 1_700_000_000_000;

/// The op id numbered `n` (op 1 registers the provider).
pub fn op(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// A manager config whose `sim` factory always returns `sim`.
pub fn config(sim: &SimProvider) -> ManagerConfig {
    let mut config = ManagerConfig::default();
    config.factories.insert("sim".into(), sim.factory());
    config
}

/// Provider `p` registered, as the journal would hold it (op 1, done).
pub fn provider_records() -> Vec<Record> {
    vec![
        Record::Intent {
            op: op(1),
            at_ms: T0,
            action: Action::AddProvider(ProviderRecord {
                id: "p".into(),
                kind: "sim".into(),
                config: BTreeMap::new(),
            }),
        },
        Record::Outcome {
            op: op(1),
            at_ms: T0,
            result: OpResult::Done(Done::default()),
        },
    ]
}
