//! volmgr: the front-ends of the volume manager — the HTTP agent
//! ([`agent`]) and the command line ([`cli`]) — over the embeddable core
//! library `volmgr-core`, whose modules are re-exported here under their own
//! names (`volmgr::manager` is `volmgr_core::manager`).
//!
//! A host agent that only embeds the manager depends on `volmgr-core`, which
//! builds without axum, clap, indicatif or tracing-subscriber. See
//! `ARCHITECTURE.md` for the map.

// A panic in the agent or the library is a bug, never a reply: no unwrap
// outside tests (clippy.toml allows it in #[test] code). Issue 15.
#![warn(clippy::unwrap_used)]

pub use volmgr_core::{
    fsutil, journal, manager, model, provider, reconcile, state, storage, validate,
};

pub mod agent;
pub mod cli;
pub mod csi;
pub mod timefmt;
