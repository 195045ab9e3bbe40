//! volmgr-core: the embeddable core of volmgr, an event-sourced host volume
//! manager.
//!
//! Every operation is appended to a checksummed write-ahead [`journal`] and
//! replayed at startup into the pure [`state`] machine; storage side effects
//! go through [`provider`]s (directories, btrfs, ZFS) and are reconciled
//! ([`reconcile`]) against the journal at every open. [`manager::Manager`] is
//! the async API a host agent embeds. This crate compiles no HTTP server and
//! no command line: those live in the `volmgr` crate. See `ARCHITECTURE.md`.

pub mod fsutil;
pub mod journal;
pub mod manager;
pub mod model;
pub mod provider;
pub mod reconcile;
pub mod state;
pub mod storage;
pub mod validate;
