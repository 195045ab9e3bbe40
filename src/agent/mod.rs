//! The host agent: an HTTP API (axum) over a [`Manager`](crate::manager::Manager),
//! the routes of Flynn's volume API plus fork, and snapshot pulls between
//! agents; and a typed [`client`] of that API.
//!
//! Embedding: bind a listener, open a manager, call [`serve`] with a
//! shutdown future. `volmgr serve` does the same, with an [`Agent`] in the
//! starting phase while the manager opens. The agent uses the library's
//! public API only, like any embedding host agent.

pub mod api;
pub mod client;
pub mod error;
mod routes;
mod server;

pub use client::{Client, ClientError};
pub use error::ApiError;
pub use server::{Agent, AgentError, DEFAULT_LISTEN, MAX_JSON_BODY_BYTES, ServeOptions, serve};
