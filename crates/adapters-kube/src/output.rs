//! Moving bytes over an exec stream: stdin in, stdout and stderr out to the sink and the capture,
//! with the wrapper's control line taken off the front of stderr.

use std::time::Duration;

use domain::output::{HeadTailBuffer, OutputStream};
use domain::ports::{ExecRequest, OutputSink};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::wrapper::{parse_control, Control};

/// How long output may still be read after the exec stream ended. kube-rs closes its pipes
/// after a status, but not when the WebSocket breaks; past this we stop waiting for an EOF.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// Bytes read from a pipe at once, so output reaches the sink in modest chunks.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// Longest first stderr line that is still looked at as a control line; the wrapper's is short.
const MAX_CONTROL_LINE_BYTES: usize = 512;

/// Takes the wrapper's control line off the front of stderr and passes everything else through.
#[derive(Debug)]
pub(crate) struct ControlSplitter<'a> {
    tag: String,
    request: &'a ExecRequest,
    pending: Vec<u8>,
    control: Option<Option<Control>>,
}

impl<'a> ControlSplitter<'a> {
    /// A splitter looking for `tag` (see `wrapper::control_tag`).
    pub(crate) fn new(tag: String, request: &'a ExecRequest) -> Self {
        Self { tag, request, pending: Vec::new(), control: None }
    }

    /// Feeds a chunk of stderr; returns the bytes that belong to the command's own stderr.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.control.is_some() {
            return chunk.to_vec();
        }
        self.pending.extend_from_slice(chunk);
        if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let parsed = parse_control(&self.pending[..end], &self.tag, self.request);
            let rest =
                if parsed.is_some() { self.pending.split_off(end + 1) } else { std::mem::take(&mut self.pending) };
            self.pending.clear();
            self.control = Some(parsed);
            return rest;
        }
        if self.pending.len() > MAX_CONTROL_LINE_BYTES {
            self.control = Some(None);
            return std::mem::take(&mut self.pending);
        }
        Vec::new()
    }

    /// What the control line said (`None`: there was none), and any bytes still held back.
    pub(crate) fn finish(self) -> (Option<Control>, Vec<u8>) {
        (self.control.flatten(), self.pending)
    }
}

/// Reads one output stream to its end, sending every chunk to the sink and the capture; stops
/// `OUTPUT_DRAIN_TIMEOUT` after `ended` fires even without an EOF. On stderr, `splitter` removes
/// the control line first.
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    stream: OutputStream,
    sink: &dyn OutputSink,
    cap: usize,
    ended: &CancellationToken,
    mut splitter: Option<&mut ControlSplitter<'_>>,
) -> HeadTailBuffer {
    let mut capture = HeadTailBuffer::new(cap);
    let Some(mut pipe) = pipe else { return capture };
    // One deadline for the whole drain: a writer that never pauses must not push it back.
    let drain_deadline = async {
        ended.cancelled().await;
        tokio::time::sleep(OUTPUT_DRAIN_TIMEOUT).await;
    };
    tokio::pin!(drain_deadline);
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        tokio::select! {
            read = pipe.read(&mut buf) => match read {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = match splitter.as_deref_mut() {
                        Some(splitter) => splitter.push(&buf[..n]),
                        None => buf[..n].to_vec(),
                    };
                    deliver(&chunk, stream, sink, &mut capture).await;
                }
                Err(e) => {
                    tracing::warn!(stream = stream.as_str(), error = %e, "cannot read command output");
                    break;
                }
            },
            () = &mut drain_deadline => {
                tracing::debug!(stream = stream.as_str(), "exec output still open after the stream ended; not waiting");
                break;
            }
        }
    }
    capture
}

/// Sends a chunk to the sink and the capture (empty chunks are skipped).
pub(crate) async fn deliver(chunk: &[u8], stream: OutputStream, sink: &dyn OutputSink, capture: &mut HeadTailBuffer) {
    if !chunk.is_empty() {
        sink.emit(stream, chunk).await;
        capture.push(chunk);
    }
}

/// Writes the request's stdin bytes and then shuts the writer down, which kube-rs turns into a
/// v5 CLOSE for stdin: the command sees EOF. Gives up when the stream ends first.
pub(crate) async fn feed_stdin<W: AsyncWrite + Unpin>(
    pipe: Option<W>,
    bytes: Option<&[u8]>,
    ended: &CancellationToken,
) {
    let (Some(mut pipe), Some(bytes)) = (pipe, bytes) else { return };
    let write = async {
        pipe.write_all(bytes).await?;
        pipe.shutdown().await
    };
    tokio::select! {
        written = write => {
            if let Err(e) = written {
                tracing::debug!(error = %e, "stdin not fully delivered");
            }
        }
        () = ended.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use domain::command::EnvMap;
    use domain::ids::CommandId;

    use super::*;
    use crate::wrapper::control_tag;

    fn request() -> ExecRequest {
        ExecRequest {
            command_id: CommandId::generate(),
            project: domain::testing::project_name("split"),
            workdir: "/w".into(),
            argv: vec!["true".into()],
            env: EnvMap::default(),
            cwd: Some("sub".into()),
            stdin: None,
            timeout: Duration::from_secs(1),
            max_output_bytes: 100,
        }
    }

    #[test]
    fn the_control_line_is_removed_even_when_split_across_chunks() {
        let req = request();
        let tag = control_tag(&req);
        let mut s = ControlSplitter::new(tag.clone(), &req);
        let line = format!("{tag} ok\nuser err\n");
        let (a, b) = line.as_bytes().split_at(7);
        assert_eq!(s.push(a), b"");
        assert_eq!(s.push(b), b"user err\n");
        assert_eq!(s.push(b"more"), b"more");
        assert_eq!(s.finish(), (Some(Control::Started), Vec::new()));
    }

    #[test]
    fn a_failed_start_is_reported_in_the_requests_terms() {
        let req = request();
        let tag = control_tag(&req);
        let mut s = ControlSplitter::new(tag.clone(), &req);
        assert_eq!(s.push(format!("{tag} fail cwd\n").as_bytes()), b"");
        let (control, rest) = s.finish();
        assert_eq!(control, Some(Control::Failed("working directory sub does not exist or is not a directory".into())));
        assert!(rest.is_empty());
    }

    #[test]
    fn foreign_stderr_passes_through_whole() {
        let req = request();
        let mut s = ControlSplitter::new(control_tag(&req), &req);
        assert_eq!(s.push(b"exec: sh: not found\n"), b"exec: sh: not found\n");
        assert_eq!(s.finish().0, None);

        let mut s = ControlSplitter::new(control_tag(&req), &req);
        assert_eq!(s.push(b"no newline"), b"");
        assert_eq!(s.finish(), (None, b"no newline".to_vec()));

        let mut s = ControlSplitter::new(control_tag(&req), &req);
        let long = vec![b'x'; MAX_CONTROL_LINE_BYTES + 1];
        assert_eq!(s.push(&long), long);
    }
}
