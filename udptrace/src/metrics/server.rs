//! The scrape endpoint: `GET /metrics` over HTTP/1 (hyper), on a thread with its own small
//! tokio runtime, so that a slow or stuck scraper never delays the event loop and a busy event
//! loop never delays a scrape. The address is bound at start-up, before anything is loaded,
//! so a bad or busy address is the first error the user sees.

use std::{convert::Infallible, net::SocketAddr, thread, time::Duration};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE as EXPOSITION;

use super::Metrics;

/// Where the exposition is served.
pub const PATH: &str = "/metrics";

/// A client that has not sent its request headers within this is disconnected (hyper's
/// default is none: an idle connection would be held forever).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound address, not yet served.
pub struct Endpoint {
    listener: std::net::TcpListener,
}

impl Endpoint {
    /// Binds `address` (`--metrics ADDR`): fails with one line naming it (in use, not an
    /// address of this host, a privileged port).
    pub fn bind(address: SocketAddr) -> anyhow::Result<Self> {
        let listener =
            std::net::TcpListener::bind(address).with_context(|| format!("--metrics {address}"))?;
        listener
            .set_nonblocking(true)
            .with_context(|| format!("--metrics {address}"))?;
        Ok(Self { listener })
    }

    /// The address it listens on (the port the kernel chose for port 0).
    pub fn address(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves `metrics` from a thread of its own until the returned server is dropped.
    pub fn serve(self, metrics: &Metrics) -> anyhow::Result<Server> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("--metrics: starting the server's runtime")?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let metrics = metrics.clone();
        let listener = self.listener;
        let thread = thread::Builder::new()
            .name("udptrace-metrics".into())
            .spawn(move || runtime.block_on(accept(listener, metrics, stopped)))
            .context("--metrics: starting the server's thread")?;
        Ok(Server {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// The running server; dropping it stops it (connections in progress are cut).
pub struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(
    listener: std::net::TcpListener,
    metrics: Metrics,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                // A failed accept (EMFILE, a connection reset before it was taken) concerns
                // that one client; the next scrape tries again.
                let Ok((stream, _)) = accepted else { continue };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let response = respond(&metrics, &request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    // A client that goes away mid-request is its own business.
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = &mut stopped => return,
        }
    }
}

/// `GET /metrics` (and `HEAD`): the exposition; anything else says where it is.
fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, text: String| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != PATH {
        return reply(
            StatusCode::NOT_FOUND,
            format!("udptrace serves its metrics at {PATH}\n"),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{PATH} answers GET\n"),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = reply(StatusCode::OK, metrics.encode());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(EXPOSITION));
    response
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpStream,
    };

    use super::*;

    /// The status line and headers, and the body, of `request` sent to `address`.
    fn ask(address: SocketAddr, request: &str) -> (String, String) {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }

    #[test]
    fn serves_the_exposition_at_metrics_only() {
        let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = endpoint.address().unwrap();
        let metrics = Metrics::new();
        metrics.hooks(&[]);
        let server = endpoint.serve(&metrics).unwrap();
        let (head, body) = ask(address, "GET /metrics HTTP/1.0\r\n\r\n");
        assert!(head.starts_with("HTTP/1.0 200 OK"), "{head}");
        assert!(
            head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(
            body.contains("udptrace_hooks_attached{mechanism=\"none\"} 0"),
            "{body}"
        );
        let (head, body) = ask(address, "GET / HTTP/1.0\r\n\r\n");
        assert!(head.starts_with("HTTP/1.0 404"), "{head}");
        assert_eq!(body, "udptrace serves its metrics at /metrics\n");
        let (head, _) = ask(address, "POST /metrics HTTP/1.0\r\n\r\n");
        assert!(head.starts_with("HTTP/1.0 405"), "{head}");
        assert!(head.contains("allow: GET, HEAD"), "{head}");
        drop(server);
        assert!(
            TcpStream::connect(address).is_err(),
            "the port is closed once the server is dropped"
        );
    }

    #[test]
    fn a_busy_address_is_refused_with_its_name() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let error = Endpoint::bind(address).err().unwrap();
        assert_eq!(
            format!("{error:#}"),
            format!("--metrics {address}: Address already in use (os error 98)")
        );
    }
}
