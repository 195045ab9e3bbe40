//! The host agent: an HTTP API (axum) over a [`Manager`](crate::manager::Manager)
//! in Flynn's wire format (Flynn's own client works unchanged), plus
//! volmgr's extensions (fork, resumable pulls, extra fields and events);
//! snapshot pulls between peers; and a typed [`client`] of that API.
//!
//! Every resource a client or peer can hold is bounded ([`Limits`]):
//! connections and their time, sends, pulls, event subscribers, shutdown.
//!
//! Embedding: bind a listener, open a manager, call [`serve`] with a
//! shutdown future and a token. `volmgr serve` does the same, with an
//! [`Agent`] in the starting phase while the manager opens. The agent uses
//! the library's public API only, like any embedding host agent.

pub mod api;
pub mod client;
mod conn;
pub mod credential;
pub mod error;
mod events;
pub mod limits;
pub mod peers;
mod pull;
mod pull_watch;
mod routes;
mod server;
mod slots;

pub use client::{Client, ClientError, PullFrom};
pub use conn::{ClientAddr, MAX_HEAD_BYTES};
pub use error::ApiError;
pub use limits::Limits;
pub use peers::Peers;
pub use server::{Agent, AgentError, DEFAULT_LISTEN, MAX_JSON_BODY_BYTES, ServeOptions, serve};
