//! Reads a container's stdout/stderr pipes and turns them into [`OutputLine`]s on a channel.
//!
//! Both drivers use it. The readers keep draining the pipes when nobody listens any more,
//! so an app never blocks on a full pipe because its output is unwanted.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use crate::{OutputLine, OutputStream};

/// Lines longer than this are split (a runaway line must not eat the DEA's memory).
const MAX_LINE: usize = 64 * 1024;
/// Lines buffered before the app's writes wait for the consumer.
const CHANNEL_CAPACITY: usize = 1024;

/// Starts reader tasks for `stdout` and `stderr`; the receiver ends when both are closed.
pub fn spawn_readers(
    stdout: impl AsyncRead + Unpin + Send + 'static,
    stderr: impl AsyncRead + Unpin + Send + 'static,
) -> mpsc::Receiver<OutputLine> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(read_lines(stdout, OutputStream::Stdout, tx.clone()));
    tokio::spawn(read_lines(stderr, OutputStream::Stderr, tx));
    rx
}

async fn read_lines(
    pipe: impl AsyncRead + Unpin,
    stream: OutputStream,
    tx: mpsc::Sender<OutputLine>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    let mut listening = true;
    loop {
        buf.clear();
        match read_line_capped(&mut reader, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !listening {
            continue;
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        if tx.send(OutputLine { stream, text }).await.is_err() {
            listening = false;
        }
    }
}

/// Reads up to and including a newline, or [`MAX_LINE`] bytes, whichever comes first.
async fn read_line_capped(
    reader: &mut BufReader<impl AsyncRead + Unpin>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(buf.len());
        }
        let room = MAX_LINE - buf.len();
        let (take, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) if i < room => (i + 1, true),
            _ if available.len() >= room => (room, true),
            _ => (available.len(), false),
        };
        buf.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            return Ok(buf.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_and_replaces_bad_utf8() {
        let out: &[u8] = b"one\ntwo\r\n\xffthree";
        let err: &[u8] = b"";
        let mut rx = spawn_readers(out, err);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l.text);
        }
        assert_eq!(lines, vec!["one", "two", "\u{fffd}three"]);
    }

    #[tokio::test]
    async fn long_lines_are_split() {
        let long = vec![b'a'; MAX_LINE + 10];
        let err: &[u8] = b"";
        let mut rx = spawn_readers(std::io::Cursor::new(long), err);
        assert_eq!(rx.recv().await.unwrap().text.len(), MAX_LINE);
        assert_eq!(rx.recv().await.unwrap().text.len(), 10);
    }
}
