//! `viridian ctl`: the API's client. One HTTP/1.1 request per command over the Unix socket, the
//! response parsed with httparse; the body is printed as it came (JSON, or Prometheus text) and a
//! non-2xx status becomes an error carrying the server's message.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Longest a command waits for its answer (a graceful shutdown waits for the guest first).
const TIMEOUT: Duration = Duration::from_secs(120);
/// Largest response read.
const MAX_RESPONSE: u64 = 16 << 20;

/// Sends `method path` with `body` (JSON) to the API at `socket`; returns the response body.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Result<String> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .context("reading the response")?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let header_len = match response.parse(&raw).context("parsing the response")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => bail!("the service closed the connection mid-response"),
    };
    let code = response.code.unwrap_or(0);
    let text = String::from_utf8_lossy(&raw[header_len..]).into_owned();
    if !(200..300).contains(&code) {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        bail!("the service answered {code}: {message}");
    }
    Ok(text)
}
