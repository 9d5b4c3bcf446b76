//! The terminal port of a node that does not lead its cell: every frame is answered
//! with an unsigned `Redirect` naming the leader's terminal address (docs/PROTOCOL.md
//! §5.13), and the connection is closed. Nothing is decided, nothing is read from the
//! store, and no sequence is used up.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use onecard_protocol::FrameCodec;
use onecard_protocol::frame::{self, Envelope};
use onecard_protocol::message::{Answer, Redirect};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::codec::FramedRead;

use crate::date::now_ms;

/// Accepts connections on `listener` until `shutdown` turns true, answering the first
/// frame of each with a redirect to the address `leader` holds now (empty while the
/// cell has no leader). At most `connections_max` are open at once; one that sends no
/// whole frame within `read_timeout` is closed.
///
/// # Errors
/// Only if the listener itself fails.
pub async fn redirect(
    listener: &TcpListener,
    leader: watch::Receiver<String>,
    connections_max: usize,
    read_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(connections_max.max(1)));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Ok(()),
            },
            () = stopped(&mut shutdown) => return Ok(()),
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => return Ok(()),
        };
        let leader = leader.clone();
        tokio::spawn(async move {
            answer_one(stream, &leader, read_timeout).await;
            drop(permit);
        });
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(drop);
}

/// Reads one frame and answers it with a redirect; any other outcome just closes.
async fn answer_one(stream: TcpStream, leader: &watch::Receiver<String>, read_timeout: Duration) {
    let (read, mut write) = stream.into_split();
    let mut frames = FramedRead::new(read, FrameCodec);
    let Ok(Some(Ok(frame))) = tokio::time::timeout(read_timeout, frames.next()).await else {
        return;
    };
    let header = *frame.header();
    let address = leader.borrow().clone();
    let redirect = Redirect::new(header.message_type_raw, &address).unwrap_or_else(|error| {
        // The address comes from the cell's settings, which are checked at start.
        tracing::error!(%error, address, "the leader's address does not fit a redirect");
        Redirect::nowhere(header.message_type_raw)
    });
    let envelope = Envelope {
        terminal_id: header.terminal_id,
        sequence: header.sequence,
        timestamp_ms: now_ms(),
    };
    let mut out = BytesMut::new();
    if frame::encode(envelope, &Answer::Redirect(redirect), None, &mut out).is_err() {
        return;
    }
    let _ = tokio::time::timeout(read_timeout, async {
        let _ = write.write_all(&out).await;
        let _ = write.shutdown().await;
    })
    .await;
}
