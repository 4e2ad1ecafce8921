//! WebSocket echo round-trip benchmark, used by `benches/load/h3.sh`.
//!
//! Two roles in one binary:
//!
//! * `ws_bench echo --listen 127.0.0.1:0` — a plain-`ws://` echo server (one
//!   task per connection, every text/binary message sent straight back). It
//!   prints `listening on ADDR` once bound.
//! * `ws_bench client --addr HOST:PORT --mode direct|h1|h2 …` — opens ONE
//!   WebSocket and sends `--messages` messages of `--size` bytes *sequentially*
//!   (send one, wait for its echo, send the next), timing each round trip, and
//!   prints one line: `mode=… n=… mean_us=… p50_us=… p90_us=… p99_us=… max_us=…`.
//!   `direct` is plain `ws://` (straight to the echo server), `h1` is `wss://`
//!   with an HTTP/1.1 Upgrade, `h2` is `wss://` over HTTP/2 extended CONNECT
//!   (RFC 8441). TLS is 1.3 only, verified against `--ca`, SNI `--host`.
//!
//! The client runs on a current-thread runtime so the measurement is one
//! thread doing one thing: a round trip through the proxy minus the same
//! round trip straight to the echo server is what the proxy adds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "WebSocket echo server and sequential round-trip client")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Plain ws:// echo server.
    Echo {
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Sequential round-trip client.
    Client {
        /// Address to connect to (TCP).
        #[arg(long)]
        addr: SocketAddr,
        /// How to reach the echo: plain ws, wss over h1 Upgrade, wss over h2 extended CONNECT.
        #[arg(long, value_enum, default_value = "direct")]
        mode: Mode,
        /// Host name: SNI and Host / :authority.
        #[arg(long, default_value = "localhost")]
        host: String,
        /// Request path.
        #[arg(long, default_value = "/ws")]
        path: String,
        /// CA certificate (PEM) for wss.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Timed round trips.
        #[arg(long, default_value_t = 5000)]
        messages: usize,
        /// Untimed round trips first.
        #[arg(long, default_value_t = 200)]
        warmup: usize,
        /// Payload bytes per message (binary).
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Direct,
    H1,
    H2,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::H1 => "h1",
            Self::H2 => "h2",
        }
    }
}

fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Echo { listen } => rt.block_on(echo(listen)),
        Cmd::Client {
            addr,
            mode,
            host,
            path,
            ca,
            messages,
            warmup,
            size,
        } => rt.block_on(async move {
            let ws = connect(addr, mode, &host, &path, ca.as_deref()).await?;
            let mut rtts = round_trips(ws, warmup, messages, size).await?;
            println!("{}", summary(mode.label(), &mut rtts));
            Ok(())
        }),
    }
}

async fn echo(listen: SocketAddr) -> Result<(), BoxError> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Anything a WebSocket can run over.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(
    addr: SocketAddr,
    mode: Mode,
    host: &str,
    path: &str,
    ca: Option<&std::path::Path>,
) -> Result<WebSocketStream<Box<dyn Io>>, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    if mode == Mode::Direct {
        let io: Box<dyn Io> = Box::new(tcp);
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{host}{path}"), io).await?;
        return Ok(ws);
    }
    let ca = ca.ok_or("--ca is needed for wss")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![match mode {
        Mode::H2 => b"h2".to_vec(),
        _ => b"http/1.1".to_vec(),
    }];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(host.to_string())?, tcp)
        .await?;
    if mode == Mode::H1 {
        let io: Box<dyn Io> = Box::new(tls);
        let (ws, _) = tokio_tungstenite::client_async(format!("wss://{host}{path}"), io).await?;
        return Ok(ws);
    }
    // HTTP/2 extended CONNECT (RFC 8441).
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await?;
    tokio::spawn(conn);
    let mut req = http::Request::connect(format!("https://{host}{path}"))
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())?;
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = send.send_request(req).await?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("extended CONNECT answered {}", resp.status()).into());
    }
    let upgraded = hyper::upgrade::on(&mut resp).await?;
    let io: Box<dyn Io> = Box::new(TokioIo::new(upgraded));
    Ok(WebSocketStream::from_raw_socket(io, Role::Client, None).await)
}

async fn round_trips(
    mut ws: WebSocketStream<Box<dyn Io>>,
    warmup: usize,
    messages: usize,
    size: usize,
) -> Result<Vec<Duration>, BoxError> {
    let payload = Bytes::from(vec![b'x'; size]);
    let mut rtts = Vec::with_capacity(messages);
    for i in 0..warmup + messages {
        let start = Instant::now();
        ws.send(Message::Binary(payload.clone())).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if b.len() == size => break,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(other)) => return Err(format!("unexpected message {other:?}").into()),
                Some(Err(e)) => return Err(e.into()),
                None => return Err("connection closed mid-run".into()),
            }
        }
        if i >= warmup {
            rtts.push(start.elapsed());
        }
    }
    let _ = ws.close(None).await;
    Ok(rtts)
}

fn summary(label: &str, rtts: &mut [Duration]) -> String {
    rtts.sort_unstable();
    let n = rtts.len();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        us(rtts[i])
    };
    let mean = if n == 0 {
        0.0
    } else {
        rtts.iter().map(|d| us(*d)).sum::<f64>() / n as f64
    };
    format!(
        "mode={label} n={n} mean_us={mean:.1} p50_us={:.1} p90_us={:.1} p99_us={:.1} max_us={:.1}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        rtts.last().map_or(0.0, |d| us(*d)),
    )
}
