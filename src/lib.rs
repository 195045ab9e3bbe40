//! volmgr: an event-sourced host volume manager.
//!
//! Every operation is appended to a checksummed write-ahead [`journal`] and
//! replayed at startup; storage side effects go through the [`storage`] seam
//! (journal files) and providers (volumes). See `ARCHITECTURE.md` for the map.

pub mod agent;
pub mod cli;
pub mod journal;
pub mod manager;
pub mod provider;
pub mod reconcile;
pub mod state;
pub mod storage;
pub mod validate;
