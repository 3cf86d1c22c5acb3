//! A scriptable webhook receiver on loopback: a minimal HTTP/1.1 server that
//! records every request and answers from a script, can hang, and can go down and come back
//! on the same port.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Largest request body the receiver accepts.
const MAX_BODY: usize = 1024 * 1024;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path.
    pub path: String,
    /// Headers, names in lowercase.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: String,
    /// When it arrived.
    pub at: Instant,
    /// The status it was answered with; `None` when the receiver hung instead.
    pub answered: Option<u16>,
}

impl Received {
    /// A header by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An answer.
    Status {
        /// The status code.
        code: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// The body.
        body: String,
    },
    /// Never answer (until the client gives up).
    Hang,
}

impl Reply {
    /// An empty answer with `code`.
    pub fn status(code: u16) -> Self {
        Self::Status { code, headers: Vec::new(), body: String::new() }
    }

    /// The same answer with `body`.
    pub fn with_body(self, text: impl Into<String>) -> Self {
        match self {
            Self::Status { code, headers, .. } => Self::Status { code, headers, body: text.into() },
            Self::Hang => Self::Hang,
        }
    }

    /// The same answer with one more header.
    pub fn with_header(self, name: &str, value: &str) -> Self {
        match self {
            Self::Status { code, mut headers, body } => {
                headers.push((name.to_owned(), value.to_owned()));
                Self::Status { code, headers, body }
            }
            Self::Hang => Self::Hang,
        }
    }
}

#[derive(Debug)]
struct Shared {
    received: Mutex<Vec<Received>>,
    script: Mutex<(VecDeque<Reply>, Reply)>,
    arrived: Notify,
    stop: CancellationToken,
}

/// The receiver. Stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    serving: Mutex<Option<CancellationToken>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Coming back on the same port right after going down.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Receiver {
    /// A receiver on `127.0.0.1` at a free port, answering `204` until told otherwise.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            script: Mutex::new((VecDeque::new(), Reply::status(204))),
            arrived: Notify::new(),
            stop: CancellationToken::new(),
        });
        let receiver = Self { addr, shared, serving: Mutex::new(None) };
        receiver.serve(listener);
        Ok(receiver)
    }

    fn serve(&self, listener: TcpListener) {
        let token = self.shared.stop.child_token();
        *lock(&self.serving) = Some(token.clone());
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            tokio::spawn(connection(stream, Arc::clone(&shared), token.clone()));
                        }
                        Err(_) => break,
                    },
                }
            }
        });
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers the next requests with `replies`, in order, then with the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.shared.script).0.extend(replies);
    }

    /// The answer once the script is used up.
    pub fn set_default(&self, reply: Reply) {
        lock(&self.shared.script).1 = reply;
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        lock(&self.shared.received).len()
    }

    /// Forgets the requests recorded so far.
    pub fn clear(&self) {
        lock(&self.shared.received).clear();
    }

    /// Waits until at least `n` requests arrived or `timeout` passed; returns the count.
    pub async fn wait_for_count(&self, n: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            let count = self.count();
            if count >= n || tokio::time::Instant::now() >= deadline {
                return count;
            }
            let _ = tokio::time::timeout_at(deadline, arrived).await;
        }
    }

    /// Waits until at least `n` requests arrived or `timeout` passed; returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_for_count(n, timeout).await;
        self.received()
    }

    /// Stops listening and drops open connections: the port refuses connections.
    pub fn go_down(&self) {
        if let Some(token) = lock(&self.serving).take() {
            token.cancel();
        }
    }

    /// Listens again on the same port.
    ///
    /// # Errors
    /// When the port cannot be bound again.
    pub fn come_back(&self) -> std::io::Result<()> {
        self.serve(bind(self.addr)?);
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>, stop: CancellationToken) {
    let mut stream = BufReader::new(stream);
    loop {
        let request = tokio::select! {
            () = stop.cancelled() => return,
            r = read_request(&mut stream) => r,
        };
        let Some((received, keep_alive)) = request else { return };
        let reply = {
            let mut script = lock(&shared.script);
            script.0.pop_front().unwrap_or_else(|| script.1.clone())
        };
        let answered = match &reply {
            Reply::Status { code, .. } => Some(*code),
            Reply::Hang => None,
        };
        lock(&shared.received).push(Received { answered, ..received });
        shared.arrived.notify_waiters();
        let Reply::Status { code, headers, body } = reply else {
            // Hang until the client gives up or the receiver stops.
            stop.cancelled().await;
            return;
        };
        let mut head = format!("HTTP/1.1 {code} Status\r\ncontent-length: {}\r\n", body.len());
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(if keep_alive { "\r\n" } else { "connection: close\r\n\r\n" });
        let writer = stream.get_mut();
        if writer.write_all(head.as_bytes()).await.is_err() || writer.write_all(body.as_bytes()).await.is_err() {
            return;
        }
        if !keep_alive {
            return;
        }
    }
}

async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<(Received, bool)> {
    let mut line = String::new();
    stream.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).await.ok().filter(|n| *n > 0)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    if length > MAX_BODY {
        return None;
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    let keep_alive = headers.get("connection").is_none_or(|c| !c.eq_ignore_ascii_case("close"));
    let body = String::from_utf8_lossy(&body).into_owned();
    Some((Received { path, headers, body, at: Instant::now(), answered: None }, keep_alive))
}
