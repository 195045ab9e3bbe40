//! A gRPC channel to a CSI endpoint on a unix socket, for tests, the
//! benchmark and tools (the CO's side of the socket).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use super::proto::controller_client::ControllerClient;
use super::proto::identity_client::IdentityClient;
use super::proto::node_client::NodeClient;

/// Connects to the plugin listening on the unix socket `path`.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_owned();
    // The URI is required by the API and ignored by the connector.
    Endpoint::from_static("http://csi.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// The three service clients over one channel.
#[derive(Debug, Clone)]
pub struct CsiClients {
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
}

impl CsiClients {
    pub async fn connect(path: &Path) -> Result<CsiClients, tonic::transport::Error> {
        let channel = connect(path).await?;
        Ok(CsiClients {
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
        })
    }
}
