//! volmgr-core: the embeddable core of volmgr, an event-sourced host volume
//! manager.
//!
//! Every operation is appended to a checksummed write-ahead [`journal`] and
//! replayed at startup into the pure [`state`] machine; storage side effects
//! go through [`provider`]s (directories, btrfs, ZFS) and are reconciled
//! ([`reconcile`]) against the journal at every open. [`manager::Manager`] is
//! the async API a host agent embeds. This crate compiles no HTTP server and
//! no command line: those live in the `volmgr` crate. See `ARCHITECTURE.md`.
//!
//! # Example: what survives a restart
//!
//! Flynn's persistence test, through this crate: open a manager on a state
//! directory with a default-provider factory (a directory provider), create a
//! volume, write a file into it, close the manager; reopen it with a factory
//! that must not be called (the provider comes back from the journal), and
//! find the volume and its file again.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::path::Path;
//!
//! use volmgr_core::manager::{Manager, ManagerConfig};
//! use volmgr_core::state::Meta;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let state_dir = tempfile::tempdir()?;
//! let root = state_dir.path().join("volumes").to_string_lossy().into_owned();
//! tokio::runtime::Runtime::new()?.block_on(async {
//!     let config = ManagerConfig {
//!         default_provider: Some(Box::new(move || {
//!             Ok(("dir".to_owned(), BTreeMap::from([("root".to_owned(), root)])))
//!         })),
//!         ..ManagerConfig::default()
//!     };
//!     let manager = Manager::open(state_dir.path(), config).await?;
//!     let meta = Meta::from([("app".to_owned(), "db".to_owned())]);
//!     let volume = manager.create_volume("default", Some("db-data"), meta).await?;
//!     std::fs::write(Path::new(&volume.location).join("foo.txt"), b"data")?;
//!     manager.close().await;
//!
//!     // Reopen: the journal brings the provider back; the factory never runs.
//!     let config = ManagerConfig {
//!         default_provider: Some(Box::new(|| panic!("the provider must come from the journal"))),
//!         ..ManagerConfig::default()
//!     };
//!     let manager = Manager::open(state_dir.path(), config).await?;
//!     let again = manager.volume("db-data")?;
//!     assert_eq!(again, volume);
//!     assert_eq!(std::fs::read(Path::new(&again.location).join("foo.txt"))?, b"data");
//!     manager.close().await;
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok(())
//! # }
//! ```

// A panic in the agent or the library is a bug, never a reply: no unwrap
// outside tests (clippy.toml allows it in #[test] code). Issue 15.
#![warn(clippy::unwrap_used)]

pub mod fsutil;
pub mod journal;
pub mod manager;
pub mod model;
pub mod provider;
pub mod reconcile;
pub mod state;
pub mod storage;
pub mod validate;
