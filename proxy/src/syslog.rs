//! Audit records to a central syslog server over TLS (RFC 5425).
//!
//! Each committed audit line is sent as one RFC 5424 message, framed by octet
//! counting (`LEN SP MSG`, RFC 5425 section 4.3): facility 13 (log audit),
//! severity informational, or alert for records that raised an alert;
//! APP-NAME `dermgate`, MSGID the record kind, the JSON line as MSG. The
//! audit file stays the record of truth: the sender runs on its own thread,
//! holds up to [`QUEUE`] lines while the server is unreachable, reconnects
//! with back-off, and counts what it had to drop. TLS 1.3 only, the server
//! verified against `syslog_ca` or the public roots.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::config::SyslogConfig;

/// Lines held while the server is unreachable.
pub const QUEUE: usize = 100_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Facility 13 ("log audit", RFC 5424 table 1).
const FACILITY: u8 = 13;
const SEVERITY_INFO: u8 = 6;
const SEVERITY_ALERT: u8 = 1;

/// The handle the audit writer sends committed lines to.
#[derive(Debug, Clone)]
pub struct Syslog {
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl Syslog {
    /// Builds the TLS client and starts the sender thread.
    pub fn start(cfg: &SyslogConfig) -> Result<Self, String> {
        let roots = match &cfg.ca {
            Some(ca) => crate::tls::load_roots(ca).map_err(|e| e.to_string())?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let tls = Arc::new(
            ClientConfig::builder_with_provider(crate::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let name = ServerName::try_from(cfg.host.clone())
            .map_err(|e| format!("syslog host {}: {e}", cfg.host))?;
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let sender = Sender {
            host: cfg.host.clone(),
            port: cfg.port,
            name,
            tls,
            hostname: hostname(),
            pid: std::process::id(),
        };
        std::thread::Builder::new()
            .name("dermgate-syslog".into())
            .spawn(move || sender.run(rx))
            .map_err(|e| e.to_string())?;
        Ok(Self { tx, dropped })
    }

    /// Queues one committed audit line (without its newline). Never blocks.
    pub fn send(&self, line: &[u8]) {
        match self.tx.try_send(line.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::error!(
                        "syslog queue full: audit records are kept in the audit file but not forwarded"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// This machine's host name (`-` when unknown), as syslog and webhooks name it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "-".into())
}

/// One RFC 5424 message for an audit line, framed by octet counting.
pub fn frame(line: &[u8], hostname: &str, pid: u32) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        ts: Option<&'a str>,
        #[serde(borrow)]
        kind: Option<&'a str>,
        alert: Option<bool>,
    }
    let head: Head<'_> = serde_json::from_slice(line).unwrap_or(Head {
        ts: None,
        kind: None,
        alert: None,
    });
    let severity = if head.alert == Some(true) {
        SEVERITY_ALERT
    } else {
        SEVERITY_INFO
    };
    let pri = FACILITY * 8 + severity;
    let msg = format!(
        "<{pri}>1 {} {hostname} dermgate {pid} {} - ",
        head.ts.unwrap_or("-"),
        head.kind.unwrap_or("-")
    );
    let len = msg.len() + line.len();
    let mut out = Vec::with_capacity(len + 8);
    out.extend_from_slice(format!("{len} ").as_bytes());
    out.extend_from_slice(msg.as_bytes());
    out.extend_from_slice(line);
    out
}

struct Sender {
    host: String,
    port: u16,
    name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    hostname: String,
    pid: u32,
}

type Conn = StreamOwned<ClientConnection, TcpStream>;

impl Sender {
    fn connect(&self) -> std::io::Result<Conn> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        tcp.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        tcp.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        let conn = ClientConnection::new(self.tls.clone(), self.name.clone())
            .map_err(std::io::Error::other)?;
        let mut s = StreamOwned::new(conn, tcp);
        // Finish the handshake now, so a refused certificate shows up here.
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(s)
    }

    fn run(self, rx: Receiver<Vec<u8>>) {
        let mut conn: Option<Conn> = None;
        let mut backoff = Duration::from_millis(250);
        let mut pending: Option<Vec<u8>> = None;
        loop {
            let line = match pending.take() {
                Some(l) => l,
                None => match rx.recv_timeout(Duration::from_secs(60)) {
                    Ok(l) => l,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            if conn.is_none() {
                match self.connect() {
                    Ok(c) => {
                        tracing::info!(server = %self.host, port = self.port, "syslog over TLS connected");
                        conn = Some(c);
                        backoff = Duration::from_millis(250);
                    }
                    Err(e) => {
                        tracing::warn!(server = %self.host, port = self.port, error = %e, "syslog server unreachable; retrying");
                        pending = Some(line);
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            if conn.as_mut().is_some_and(|c| !alive(c)) {
                tracing::warn!(server = %self.host, "syslog server closed the connection; reconnecting");
                conn = None;
                pending = Some(line);
                continue;
            }
            let framed = frame(&line, &self.hostname, self.pid);
            let Some(c) = conn.as_mut() else {
                pending = Some(line);
                continue;
            };
            // Write what has queued up behind this line too, then flush once.
            let mut result = c.write_all(&framed);
            while result.is_ok() {
                match rx.try_recv() {
                    Ok(next) => {
                        let f = frame(&next, &self.hostname, self.pid);
                        result = c.write_all(&f);
                        if result.is_err() {
                            pending = Some(next);
                        }
                    }
                    Err(_) => break,
                }
            }
            if let Err(e) = result.and_then(|()| c.flush()) {
                tracing::warn!(server = %self.host, error = %e, "syslog connection lost; reconnecting");
                conn = None;
                if pending.is_none() {
                    pending = Some(line);
                }
            }
        }
    }
}

/// Whether the server still holds the connection open. The server never
/// sends application data, so readable bytes are TLS housekeeping (session
/// tickets) or its close; end of stream or an error means it is gone. Checked
/// before each write so that a record is not written into a dead socket.
fn alive(c: &mut Conn) -> bool {
    if c.sock.set_nonblocking(true).is_err() {
        return false;
    }
    let mut probe = [0u8; 1];
    let ok = match c.sock.peek(&mut probe) {
        Ok(0) => false,
        Ok(_) => loop {
            match c.conn.read_tls(&mut c.sock) {
                Ok(0) => break false,
                Ok(_) => match c.conn.process_new_packets() {
                    Ok(state) if state.peer_has_closed() => break false,
                    Ok(_) => {}
                    Err(_) => break false,
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                Err(_) => break false,
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
        Err(_) => false,
    };
    ok && c.sock.set_nonblocking(false).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_an_audit_line_as_rfc5424_with_octet_count() {
        let line = br#"{"ts":"2026-11-24T05:30:00.000Z","kind":"decision","prev":"00"}"#;
        let f = String::from_utf8(frame(line, "gw1", 42)).unwrap();
        let (len, msg) = f.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<110>1 2026-11-24T05:30:00.000Z gw1 dermgate 42 decision - {"));
        let alert = br#"{"ts":"2026-11-24T05:30:00.000Z","kind":"event","alert":true}"#;
        let f = String::from_utf8(frame(alert, "gw1", 42)).unwrap();
        assert!(f.contains("<105>1 "));
        // Not JSON at all: still a well-formed message.
        let f = String::from_utf8(frame(b"garbage", "-", 1)).unwrap();
        assert!(f.ends_with("<110>1 - - dermgate 1 - - garbage"));
    }
}
