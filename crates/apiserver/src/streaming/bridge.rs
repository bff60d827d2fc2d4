//! What runs on an upgraded connection once both sides agreed: the WebSocket remote-command
//! protocol (v4/v5.channel.k8s.io) turned into SPDY streams towards the agent, and the
//! port-forward tunnel (SPDY frames carried in WebSocket binary messages) unwrapped into the
//! agent's SPDY connection.

use std::sync::Arc;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::Mutex;

use super::spdy::{self, Frame, HeaderWriter};
use super::websocket::{self as ws, Message};

type Io = TokioIo<Upgraded>;
type Writer = Arc<Mutex<WriteHalf<Io>>>;

/// Our SPDY stream ids (a client's are odd), one per remote-command stream.
const ERROR: u32 = 1;
const STDIN: u32 = 3;
const STDOUT: u32 = 5;
const STDERR: u32 = 7;
const RESIZE: u32 = 9;

/// The WebSocket channels of the remote-command protocol.
const CH_STDIN: u8 = 0;
const CH_STDOUT: u8 = 1;
const CH_STDERR: u8 = 2;
const CH_ERROR: u8 = 3;
const CH_RESIZE: u8 = 4;
/// v5 only: "the client closed this stream" (stdin: EOF).
const CH_CLOSE: u8 = 255;

/// Which streams the client asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

async fn send<W: AsyncWrite + Unpin>(writer: &Mutex<W>, bytes: &[u8]) -> std::io::Result<()> {
    let mut writer = writer.lock().await;
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// Runs an exec or attach session: `client` speaks WebSocket (v5 when `close_signal`), `agent`
/// speaks SPDY remote-command v4. Ends when either side does.
pub async fn remote_command(client: Upgraded, agent: Upgraded, streams: Streams, close_signal: bool) {
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (mut agent_read, agent_write) = tokio::io::split(TokioIo::new(agent));
    let client_write: Writer = Arc::new(Mutex::new(client_write));
    let agent_write: Writer = Arc::new(Mutex::new(agent_write));

    // The same streams kubectl opens over SPDY, error first; the agent's runtime waits for
    // exactly those the query announced.
    let mut headers = HeaderWriter::default();
    let mut opening = headers.syn_stream(ERROR, &[("streamType", "error")], false);
    if streams.stdin {
        opening.extend(headers.syn_stream(STDIN, &[("streamType", "stdin")], false));
    }
    if streams.stdout {
        opening.extend(headers.syn_stream(STDOUT, &[("streamType", "stdout")], false));
    }
    if streams.stderr && !streams.tty {
        opening.extend(headers.syn_stream(STDERR, &[("streamType", "stderr")], false));
    }
    if streams.tty {
        opening.extend(headers.syn_stream(RESIZE, &[("streamType", "resize")], false));
    }
    if let Err(error) = send(&agent_write, &opening).await {
        tracing::debug!(%error, "opening remote-command streams");
        ws::close(&mut *client_write.lock().await).await;
        return;
    }

    let from_agent = {
        let client_write = client_write.clone();
        let agent_write = agent_write.clone();
        async move {
            loop {
                match spdy::read_frame(&mut agent_read).await {
                    Ok(Some(Frame::Data { stream, data, .. })) => {
                        let channel = match stream {
                            STDOUT => CH_STDOUT,
                            STDERR => CH_STDERR,
                            ERROR => CH_ERROR,
                            _ => continue,
                        };
                        if data.is_empty() {
                            continue;
                        }
                        let mut message = Vec::with_capacity(data.len() + 1);
                        message.push(channel);
                        message.extend_from_slice(&data);
                        if send(&client_write, &ws::frame(ws::OP_BINARY, &message)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(Frame::Control { kind: spdy::TYPE_PING, payload, .. })) => {
                        if send(&agent_write, &spdy::ping(&payload)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(Frame::Control { kind: spdy::TYPE_RST_STREAM, payload, .. })) => {
                        tracing::debug!(stream = ?spdy::control_stream(&payload), "agent reset a remote-command stream");
                    }
                    // The runtime says goodbye once the command ended and its status was sent.
                    Ok(Some(Frame::Control { kind: spdy::TYPE_GOAWAY, .. })) | Ok(None) => return,
                    Ok(Some(Frame::Control { .. })) => {}
                    Err(error) => {
                        tracing::debug!(%error, "reading from the agent");
                        return;
                    }
                }
            }
        }
    };

    let from_client = {
        let client_write = client_write.clone();
        let agent_write = agent_write.clone();
        async move {
            let mut reader = ws::Reader::new(client_read);
            let mut stdin_open = streams.stdin;
            loop {
                match reader.next().await {
                    Ok(Some(Message::Binary(message) | Message::Text(message))) => {
                        let Some((&channel, payload)) = message.split_first() else { continue };
                        let frame = match channel {
                            CH_STDIN if stdin_open && !payload.is_empty() => spdy::data(STDIN, payload, false),
                            CH_RESIZE if streams.tty => spdy::data(RESIZE, payload, false),
                            CH_CLOSE if close_signal && payload.first() == Some(&CH_STDIN) && stdin_open => {
                                stdin_open = false;
                                spdy::data(STDIN, &[], true)
                            }
                            _ => continue,
                        };
                        if send(&agent_write, &frame).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(Message::Ping(payload))) => {
                        if send(&client_write, &ws::frame(ws::OP_PONG, &payload)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(Message::Pong)) => {}
                    Ok(Some(Message::Close)) | Ok(None) => return,
                    Err(error) => {
                        tracing::debug!(%error, "reading from the client");
                        return;
                    }
                }
            }
        }
    };

    tokio::select! {
        _ = from_agent => {}
        _ = from_client => {}
    }
    ws::close(&mut *client_write.lock().await).await;
    let _ = agent_write.lock().await.shutdown().await;
}

/// Runs a port-forward session whose SPDY connection arrives inside WebSocket binary messages
/// (kubectl 1.31+), passing the SPDY bytes through to the agent unchanged.
pub async fn tunnel(client: Upgraded, agent: Upgraded) {
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (mut agent_read, mut agent_write) = tokio::io::split(TokioIo::new(agent));
    let client_write: Writer = Arc::new(Mutex::new(client_write));

    let from_agent = {
        let client_write = client_write.clone();
        async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match agent_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if send(&client_write, &ws::frame(ws::OP_BINARY, &buf[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    let from_client = {
        let client_write = client_write.clone();
        async move {
            let mut reader = ws::Reader::new(client_read);
            loop {
                match reader.next().await {
                    Ok(Some(Message::Binary(bytes) | Message::Text(bytes))) => {
                        if agent_write.write_all(&bytes).await.is_err() || agent_write.flush().await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(Message::Ping(payload))) => {
                        if send(&client_write, &ws::frame(ws::OP_PONG, &payload)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(Message::Pong)) => {}
                    Ok(Some(Message::Close)) | Ok(None) | Err(_) => {
                        let _ = agent_write.shutdown().await;
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = from_agent => {}
        _ = from_client => {}
    }
    ws::close(&mut *client_write.lock().await).await;
}
