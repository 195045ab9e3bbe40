//! Peers: the other agents this one may pull snapshots from, by host id
//! (`volmgr serve --peer HOST_ID=URL`, `--peers-file FILE`).
//!
//! A pull names its source by Flynn's `host_id`, resolved here, or by a base
//! URL: a configured peer's URL is that peer; any other URL is refused
//! unless the operator allows arbitrary sources. The agent presents its
//! credential to configured peers only, so a request can neither make it
//! talk to an address the operator did not name nor make it leak its token.

use std::collections::BTreeMap;
use std::fmt;

use crate::validate;

/// Longest peers file read (a cluster of thousands of hosts fits).
pub const MAX_PEERS_FILE_BYTES: u64 = 1 << 20;

/// Why a peer entry is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerError(pub String);

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerError {}

/// Checks an agent's base URL (`http://host[:port][/prefix]`) and returns
/// it without a trailing slash.
pub fn base_url(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    if parsed.scheme() != "http" {
        return Err("only http:// URLs are supported".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
        || parsed.password().is_some()
    {
        return Err("a base URL has no query, fragment or credentials".into());
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// Host id → base URL of every configured peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers {
    by_id: BTreeMap<String, String>,
}

impl Peers {
    pub fn new() -> Peers {
        Peers::default()
    }

    /// Adds peer `host_id` at `url`; a host id given twice is refused.
    pub fn insert(&mut self, host_id: &str, url: &str) -> Result<(), PeerError> {
        validate::id(host_id)
            .map_err(|why| PeerError(format!("peer host id {host_id:?}: {why}")))?;
        let base =
            base_url(url).map_err(|why| PeerError(format!("peer {host_id}: {url:?}: {why}")))?;
        if self.by_id.contains_key(host_id) {
            return Err(PeerError(format!("peer {host_id} is given twice")));
        }
        self.by_id.insert(host_id.to_owned(), base);
        Ok(())
    }

    /// Adds a `HOST_ID=URL` entry (the `--peer` flag).
    pub fn insert_entry(&mut self, entry: &str) -> Result<(), PeerError> {
        let (id, url) = entry
            .split_once('=')
            .ok_or_else(|| PeerError(format!("peer {entry:?}: expected HOST_ID=URL")))?;
        self.insert(id.trim(), url.trim())
    }

    /// Adds the entries of a peers file: one `HOST_ID=URL` a line; blank
    /// lines and lines starting with `#` are skipped. An error names the
    /// line.
    pub fn insert_file_text(&mut self, text: &str) -> Result<(), PeerError> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            self.insert_entry(line)
                .map_err(|e| PeerError(format!("line {}: {e}", n + 1)))?;
        }
        Ok(())
    }

    /// The base URL of peer `host_id`.
    pub fn url(&self, host_id: &str) -> Option<&str> {
        self.by_id.get(host_id).map(String::as_str)
    }

    /// The host id of the peer whose base URL is `base` (as [`base_url`]
    /// returns it).
    pub fn host_of(&self, base: &str) -> Option<&str> {
        self.by_id
            .iter()
            .find(|(_, url)| url.as_str() == base)
            .map(|(id, _)| id.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_id.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_resolve_by_host_id_and_by_their_exact_base_url() {
        let mut p = Peers::new();
        p.insert_entry("host-a=http://10.0.0.1:1113/").unwrap();
        p.insert_file_text("# cluster\n\nhost-b = http://10.0.0.2:1113\n")
            .unwrap();
        assert_eq!(p.url("host-a"), Some("http://10.0.0.1:1113"));
        assert_eq!(p.url("host-b"), Some("http://10.0.0.2:1113"));
        assert_eq!(p.url("host-c"), None);
        assert_eq!(p.host_of("http://10.0.0.2:1113"), Some("host-b"));
        assert_eq!(p.host_of("http://10.0.0.2:1114"), None);
    }

    #[test]
    fn bad_peer_entries_are_refused_with_the_line() {
        let mut p = Peers::new();
        for bad in [
            "no-equals",
            "=http://h:1",
            "-flag=http://h:1",
            "a=https://h:1",
            "a=http://user:pw@h:1",
            "a=http://h:1/?q=1",
            "a=file:///etc/passwd",
        ] {
            assert!(p.insert_entry(bad).is_err(), "{bad}");
        }
        p.insert_entry("a=http://h:1").unwrap();
        assert!(p.insert_entry("a=http://h:2").is_err(), "twice");
        let e = Peers::new()
            .insert_file_text("b=http://h:1\nnonsense\n")
            .unwrap_err();
        assert!(e.0.starts_with("line 2:"), "{e}");
    }
}
