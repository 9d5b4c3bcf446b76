//! The terminal front door: the TCP listener and one task per terminal connection.
//!
//! A permit from a semaphore of [`TERMINAL_CONNECTIONS_MAX`] is taken *before*
//! `accept()`, so load beyond the cap waits in the kernel backlog and costs nothing
//! here. Each connection reads frames through the protocol's codec under two clocks: the
//! idle timeout while no frame has started, the frame read timeout once one has, so a
//! client that trickles bytes cannot hold a buffer.
//!
//! The engine has no terminal registry yet (it arrives with the ledger), so every
//! terminal is unknown: each frame is answered with an unsigned `Reject` carrying
//! `UnknownTerminal`, and a connection that keeps trying is closed.

use std::sync::Arc;

use bytes::BytesMut;
use futures_util::StreamExt;
use onecard_protocol::frame::{self, Envelope};
use onecard_protocol::message::{Answer, Reject};
use onecard_protocol::{AnswerCode, FrameCodec, FrameError};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::codec::FramedRead;

use crate::limits::{
    FRAME_READ_TIMEOUT, TERMINAL_CONNECTIONS_MAX, TERMINAL_IDLE_TIMEOUT,
    UNKNOWN_TERMINAL_FRAMES_MAX,
};

/// Accepts terminal connections until `shutdown` turns true.
///
/// # Errors
/// Only if the listener itself fails; a failed connection is logged and dropped.
pub async fn serve(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(TERMINAL_CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
            _ = shutdown.changed() => return Ok(()),
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait and go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let connection_shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(error) = connection(stream, connection_shutdown).await {
                tracing::debug!(%peer, %error, "terminal connection ended");
            }
            drop(permit);
        });
    }
}

/// Why a connection ended other than by the terminal closing it.
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("idle past the timeout")]
    Idle,
    #[error("frame not finished within the read timeout")]
    SlowFrame,
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("too many frames from unknown terminals")]
    UnknownTerminal,
    #[error("write failed: {0}")]
    Write(#[from] std::io::Error),
}

async fn connection(
    stream: TcpStream,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionEnd> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut frames = FramedRead::new(read, FrameCodec);
    let mut unknown_frames = 0;
    let mut out = BytesMut::new();
    loop {
        let timeout = if frames.read_buffer().is_empty() {
            TERMINAL_IDLE_TIMEOUT
        } else {
            FRAME_READ_TIMEOUT
        };
        let next = tokio::select! {
            next = tokio::time::timeout(timeout, frames.next()) => next,
            _ = shutdown.changed() => return Ok(()),
        };
        let frame = match next {
            Err(_) if timeout == TERMINAL_IDLE_TIMEOUT => return Err(ConnectionEnd::Idle),
            Err(_) => return Err(ConnectionEnd::SlowFrame),
            Ok(None) => return Ok(()),
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(error))) => {
                if let Some(code) = error.answer_code() {
                    out.clear();
                    reject(
                        &mut out,
                        Envelope { terminal_id: 0, sequence: 0, timestamp_ms: 0 },
                        code,
                        0,
                    );
                    write.write_all(&out).await?;
                }
                return Err(error.into());
            }
        };
        let header = frame.header();
        let envelope = Envelope {
            terminal_id: header.terminal_id,
            sequence: header.sequence,
            timestamp_ms: onecard_protocol::client::now_ms(),
        };
        out.clear();
        reject(&mut out, envelope, AnswerCode::UnknownTerminal, header.message_type_raw);
        write.write_all(&out).await?;
        unknown_frames += 1;
        if unknown_frames >= UNKNOWN_TERMINAL_FRAMES_MAX {
            return Err(ConnectionEnd::UnknownTerminal);
        }
    }
}

/// Writes an unsigned `Reject` into `out`.
fn reject(out: &mut BytesMut, envelope: Envelope, code: AnswerCode, refused_type: u16) {
    let answer = Answer::Reject(Reject { code, refused_type });
    frame::encode(envelope, &answer, None, out).expect("a Reject always fits a frame");
}
