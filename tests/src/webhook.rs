//! A webhook receiver for the notice tests: an HTTP/1.1 listener on loopback that
//! records every POST (its `Idempotency-Key` and JSON body) and answers 200, or 503
//! for the first `refuse_first` posts, so that the sender's retry is exercised.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, PoisonError};

/// One post received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The `Idempotency-Key` header, if any.
    pub key: Option<String>,
    /// The body as JSON (`Null` if it was not).
    pub body: serde_json::Value,
    /// Whether it was answered 200.
    pub accepted: bool,
}

/// A running receiver; its thread ends with the process.
#[derive(Debug, Clone)]
pub struct Webhook {
    address: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Webhook {
    /// Listens on a free loopback port.
    ///
    /// # Panics
    /// If it cannot bind.
    #[must_use]
    pub fn start(refuse_first: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let address = listener.local_addr().expect("an address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(&stream);
                let (mut length, mut key) = (0usize, None);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some((name, value)) = line.trim_end().split_once(':') {
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap_or(0),
                            "idempotency-key" => key = Some(value.trim().to_owned()),
                            _ => {}
                        }
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                let accepted = log.len() >= refuse_first;
                let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                log.push(Received { key, body, accepted });
                let status = if accepted { "200 OK" } else { "503 Service Unavailable" };
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = (&stream).write_all(answer.as_bytes());
            }
        });
        Self { address, received }
    }

    /// The URL to post to.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}/notices", self.address)
    }

    /// Every post so far, in order.
    #[must_use]
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}
