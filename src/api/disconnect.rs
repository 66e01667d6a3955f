//! Noticing a client that left while its request waits (queued, or generating a reply that is
//! not streamed). actix notices a closed connection only when it writes to it, and nothing
//! is written before the reply, so an abandoned request would keep its queue place and its
//! batch slot. Each connection keeps a duplicate of its socket for peeking: end of stream
//! there means the client closed its side.

use actix_web::dev::Extensions;
use actix_web::HttpRequest;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;

/// How often a waiting request looks at its connection.
const POLL: Duration = Duration::from_millis(200);

#[derive(Clone)]
struct Peer(Arc<socket2::Socket>);

/// Connection hook: keeps a duplicate of each TCP connection's socket.
pub fn on_connect(tcp: &actix_web::rt::net::TcpStream, ext: &mut Extensions) {
    // The duplicate shares the connection's non-blocking file description, so peeking never
    // blocks; it is closed with the connection's extensions.
    if let Ok(dup) = socket2::SockRef::from(tcp).try_clone() {
        ext.insert(Peer(Arc::new(dup)));
    }
}

/// The client of one request.
#[derive(Clone, Default)]
pub struct Client(Option<Peer>);

impl Client {
    pub fn of(req: &HttpRequest) -> Client {
        Client(req.conn_data::<Peer>().cloned())
    }

    /// True once the client has closed its side of the connection. Bytes waiting to be read
    /// (a pipelined request) mean it is still there.
    fn has_left(&self) -> bool {
        let Some(Peer(sock)) = &self.0 else {
            return false;
        };
        let mut buf = [MaybeUninit::<u8>::uninit(); 1];
        match sock.peek(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
        }
    }

    /// Resolves when the client has left; never for a connection it cannot watch.
    pub async fn gone(&self) {
        if self.0.is_none() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(POLL).await;
            if self.has_left() {
                return;
            }
        }
    }
}
