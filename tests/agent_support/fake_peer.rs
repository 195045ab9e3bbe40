//! A fake peer: a minimal HTTP/1.1 server on 127.0.0.1:<ephemeral> that
//! records every request (method, path, headers) and answers as a test
//! scripts it: a fixed answer (a redirect, a hostile error, a stream with a
//! lying header) or an endless body.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the fake peer received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the fake peer answers.
#[derive(Debug, Clone)]
pub enum Script {
    /// Status, extra header lines, body.
    Fixed {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Status and a body that never ends (chunks of `chunk` forever).
    Endless { status: u16, chunk: Vec<u8> },
    /// 200 with `prefix` at once, then one more byte of `rest` (cycled)
    /// every `every`, forever: a slow source.
    Trickle {
        prefix: Vec<u8>,
        rest: Vec<u8>,
        every: std::time::Duration,
    },
}

pub struct FakePeer {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Body bytes written by endless answers before the other side quit.
    pub endless_written: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakePeer {
    pub async fn start(script: Script) -> FakePeer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let endless_written = Arc::new(Mutex::new(0u64));
        let (rec, written) = (requests.clone(), endless_written.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (rec, written, script) = (rec.clone(), written.clone(), script.clone());
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut conn).await else {
                        return;
                    };
                    rec.lock().unwrap().push(request);
                    match script {
                        Script::Fixed {
                            status,
                            headers,
                            body,
                        } => {
                            let mut head = format!(
                                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                                body.len()
                            );
                            for (k, v) in headers {
                                write!(head, "{k}: {v}\r\n").unwrap();
                            }
                            head.push_str("\r\n");
                            let _ = conn.write_all(head.as_bytes()).await;
                            let _ = conn.write_all(&body).await;
                        }
                        Script::Trickle {
                            prefix,
                            rest,
                            every,
                        } => {
                            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                                        transfer-encoding: chunked\r\n\r\n";
                            let framed = [
                                format!("{:x}\r\n", prefix.len()).as_bytes(),
                                &prefix,
                                b"\r\n",
                            ]
                            .concat();
                            if conn.write_all(head.as_bytes()).await.is_err()
                                || (!prefix.is_empty() && conn.write_all(&framed).await.is_err())
                            {
                                return;
                            }
                            for byte in rest.iter().cycle() {
                                // The attacker's pace, not a synchronisation.
                                tokio::time::sleep(every).await;
                                let one = [b"1\r\n".as_slice(), &[*byte], b"\r\n"].concat();
                                if conn.write_all(&one).await.is_err() {
                                    return;
                                }
                                *written.lock().unwrap() += 1;
                            }
                        }
                        Script::Endless { status, chunk } => {
                            let head = format!(
                                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                                 transfer-encoding: chunked\r\n\r\n"
                            );
                            if conn.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            let framed =
                                [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"]
                                    .concat();
                            while conn.write_all(&framed).await.is_ok() {
                                *written.lock().unwrap() += chunk.len() as u64;
                            }
                        }
                    }
                });
            }
        });
        FakePeer {
            url,
            requests,
            endless_written,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a request head (at most 64 KiB) and its Content-Length body.
async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    let end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = conn.read(&mut byte).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - end - 4;
    while have < length.min(1 << 20) {
        let n = conn.read(&mut byte).await.ok()?;
        if n == 0 {
            break;
        }
        have += n;
    }
    Some(Recorded {
        method,
        path,
        headers,
    })
}
