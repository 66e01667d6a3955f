//! The HTTP server: the application ([`api::app`]) on actix-http's HTTP/1 service, one per
//! worker thread. It is assembled here rather than by actix-web's `HttpServer` because that
//! offers no way to wrap a connection's socket, and the wrapper ([`Conn`]) is the only place
//! where actix-http's own refusals can be given an error body. The settings are
//! `HttpServer`'s defaults.

use crate::api::{self, http_refusals::Conn, AppState};
use actix_http::{HttpService, KeepAlive};
use actix_service::{fn_service, map_config, ServiceFactoryExt};
use actix_web::dev::{AppConfig, Server};
use actix_web::rt::net::TcpStream;
use actix_web::web;
use std::time::Duration;

/// Binds `host:port` and returns the server, not yet awaited. Signals are left to
/// [`crate::shutdown`], which drains first.
pub fn bind(
    host: &str,
    port: u16,
    state: web::Data<AppState>,
    origins: Vec<String>,
) -> std::io::Result<Server> {
    let server = actix_server::Server::build()
        .disable_signals()
        // Once drained, connections left are idle.
        .shutdown_timeout(5)
        .backlog(1024)
        .bind("rkserve", (host, port), move || {
            let app = api::app(state.clone(), &origins);
            let h1 = HttpService::build()
                .keep_alive(KeepAlive::default())
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                .on_connect_ext(|conn: &Conn, ext| api::disconnect::on_connect(conn.tcp(), ext))
                .h1(map_config(app, |_| AppConfig::default()));
            fn_service(|tcp: TcpStream| async move {
                let peer = tcp.peer_addr().ok();
                Ok((Conn::new(tcp), peer))
            })
            .and_then(h1)
        })?
        .run();
    Ok(server)
}
