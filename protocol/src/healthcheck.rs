//! `--healthcheck` of every RustyBalancer binary: a std-only probe for Docker's
//! HEALTHCHECK in a `scratch` image (no shell or curl there).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

/// Sends `GET /health` to `127.0.0.1:port` over a plain TCP connection (std only).
///
/// Returns `Ok(status line)` on a 200 answer, otherwise a description of the failure.
pub fn check(port: u16) -> Result<String, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("connect to {addr} failed: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| format!("setting socket timeouts failed: {e}"))?;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: rustybalancer-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending request to {addr} failed: {e}"))?;

    // The status line is all we need; read until it is complete.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("reading response from {addr} failed: {e}")),
        }
    }
    let status_line = String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    if status_line.starts_with("HTTP/1.1 200 ") || status_line == "HTTP/1.1 200" {
        Ok(status_line)
    } else if status_line.is_empty() {
        Err(format!("{addr} closed the connection without answering"))
    } else {
        Err(format!("unhealthy answer from {addr}: {status_line}"))
    }
}
