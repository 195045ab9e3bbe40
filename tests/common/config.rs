//! The manager and provider configurations tests build: a directory
//! provider's configuration, a manager with a default provider (what
//! `volmgr serve` registers), and a manager that knows one more provider
//! kind. A test file that needs only these includes this file alone
//! (`#[path = "common/config.rs"] mod config;`); the real-provider tests
//! reach it as `common::config`.
#![allow(dead_code)]

use std::path::Path;

use volmgr::manager::ManagerConfig;
use volmgr::provider::{ProviderConfig, ProviderFactory};

/// A provider configuration of one key, `root`: what the directory and
/// btrfs providers take.
pub fn root_config(root: &Path) -> ProviderConfig {
    ProviderConfig::from([("root".to_owned(), root.to_string_lossy().into_owned())])
}

/// A manager whose default provider (registered as `default` when the
/// journal holds no provider) is `kind` with `config`.
pub fn with_default_provider(kind: &str, config: ProviderConfig) -> ManagerConfig {
    let kind = kind.to_owned();
    ManagerConfig {
        default_provider: Some(Box::new(move || Ok((kind, config)))),
        ..ManagerConfig::default()
    }
}

/// What `volmgr serve` registers by default: the directory provider under
/// `<state>/volumes`.
pub fn serve_default(state: &Path) -> ManagerConfig {
    with_default_provider("dir", root_config(&state.join("volumes")))
}

/// A manager that can also build providers of `kind` with `factory` (no
/// provider is registered).
pub fn with_factory(kind: &str, factory: ProviderFactory) -> ManagerConfig {
    let mut config = ManagerConfig::default();
    config.factories.insert(kind.to_owned(), factory);
    config
}
