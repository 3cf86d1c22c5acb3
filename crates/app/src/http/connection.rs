//! The TCP socket under a request, so that a handler can cut its connection. actix writes a
//! response only as fast as the client reads and has no write timeout: a client that stops
//! reading leaves it waiting on a full socket, deaf to whatever the response body does, until
//! the socket itself is shut down.

use std::any::Any;
use std::os::fd::{AsRawFd, RawFd};

use actix_web::dev::Extensions;
use actix_web::HttpRequest;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::socket::{shutdown, Shutdown};

/// The descriptor of a connection's socket, recorded when it was accepted.
#[derive(Debug, Clone, Copy)]
struct SocketFd(RawFd);

/// `HttpServer::on_connect` hook: records the socket of each TCP connection (only its number;
/// a handler that needs the socket takes its own descriptor, see [`Connection::of`]).
pub fn record_socket(connection: &dyn Any, data: &mut Extensions) {
    if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(SocketFd(tcp.as_raw_fd()));
    }
}

/// A request's connection that a handler's background task may cut long after the handler
/// returned; holds its own descriptor of the socket, closed on drop.
#[derive(Debug)]
pub struct Connection {
    fd: RawFd,
}

impl Connection {
    /// The connection `req` came on; `None` when it is not TCP or the descriptor cannot be
    /// duplicated. Call it from the handler: the connection is open then, so the recorded
    /// number is its socket's. A duplicate is kept rather than the number because actix closes
    /// its own descriptor whenever the connection ends, and the number may then name another.
    pub fn of(req: &HttpRequest) -> Option<Self> {
        let SocketFd(fd) = *req.conn_data::<SocketFd>()?;
        // Close-on-exec: commands are forked from this process and must not inherit sockets.
        match fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(0)) {
            Ok(fd) => Some(Self { fd }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot duplicate a connection's socket; it cannot be cut");
                None
            }
        }
    }

    /// Shuts the socket down both ways: actix's pending write fails and it drops the
    /// connection; the client reads what was already sent, then the end of the stream.
    pub fn cut(&self) {
        if let Err(e) = shutdown(self.fd, Shutdown::Both) {
            // `ENOTCONN`: the client already went away, which is what cutting wanted.
            tracing::debug!(error = %e, "shutting a connection down");
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Err(e) = nix::unistd::close(self.fd) {
            tracing::debug!(error = %e, "closing a duplicated socket");
        }
    }
}
