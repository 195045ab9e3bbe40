//! The CSI v1.12.0 messages and gRPC stubs generated from `proto/csi.proto`
//! by `build.rs` (protox + tonic-prost-build).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("csi.v1");
