//! Probes of app containers: "accepts connections" (readiness) and the response time of one
//! `GET PROBE_PATH` (an input of the availability score).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// True when `address` accepts a TCP connection within `timeout`.
pub async fn accepts(address: &str, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Io(String),
    #[error("answered with status {0}")]
    Status(u16),
    #[error("not an HTTP answer")]
    Garbled,
}

/// Sends `GET path` to `address` on a fresh connection and returns the time until the status
/// line arrived, in milliseconds. 5xx answers are failures; other statuses count as answers.
pub async fn response_time(
    address: &str,
    path: &str,
    timeout: Duration,
) -> Result<f64, ProbeError> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, status_of(address, path)).await {
        Err(_) => Err(ProbeError::Timeout(timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) if status >= 500 => Err(ProbeError::Status(status)),
        Ok(Ok(_)) => Ok(started.elapsed().as_secs_f64() * 1000.0),
    }
}

async fn status_of(address: &str, path: &str) -> Result<u16, ProbeError> {
    let io = |e: std::io::Error| ProbeError::Io(e.to_string());
    let mut stream = TcpStream::connect(address).await.map_err(io)?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: rustybalancer-agent-probe\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 128];
    while !buf.contains(&b'\n') {
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 || buf.len() > 1024 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_status(&buf).ok_or(ProbeError::Garbled)
}

/// Status code of an `HTTP/1.x NNN ...` status line.
fn parse_status(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Busy\r\nx"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[tokio::test]
    async fn probes_a_real_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let mut answers = ["200 OK", "503 Service Unavailable"].into_iter();
            let mut status = answers.next();
            while let Some(current) = status {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                // The readiness check connects and closes without sending anything.
                if s.read(&mut buf).await.unwrap_or(0) == 0 {
                    continue;
                }
                let answer = format!("HTTP/1.1 {current}\r\ncontent-length: 0\r\n\r\n");
                s.write_all(answer.as_bytes()).await.unwrap();
                status = answers.next();
            }
        });
        let t = Duration::from_secs(2);
        assert!(accepts(&addr, t).await);
        let ms = response_time(&addr, "/health", t).await.unwrap();
        assert!(ms >= 0.0);
        assert_eq!(
            response_time(&addr, "/health", t).await,
            Err(ProbeError::Status(503))
        );
        server.await.unwrap();
    }
}
