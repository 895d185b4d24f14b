//! The host's side of the network rows: the servers the guest's `net` steps talk to, bound at
//! 198.18.0.1 inside the run's own namespace before the guest boots — the UDP echo (`udp`), the
//! UDP sink (`udp-flood`: counts 64-byte datagrams, answers `end` with `done`), the TCP sink
//! (`tcp-send`: every byte checked against the pattern and hashed) and the TCP source (`tcp-recv`:
//! sends the pattern, then closes). Each runs on a thread of its own, bounded in count and in time
//! ([`PEER_WAIT`]), until [`HostPeer::finish`].

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use guest_abi::net::{
    fnv1a, pattern, DATAGRAM, ECHO_PORT, FLOOD_PORT, FNV_START, HOST_IP, TCP_SINK_PORT,
    TCP_SOURCE_PORT,
};
use host_vsp::net::netns::Netns;

/// Longest any server runs.
pub const PEER_WAIT: Duration = Duration::from_secs(300);
/// How often a server looks at the stop flag.
const TICK: Duration = Duration::from_millis(50);

/// What the servers saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerReport {
    /// Datagrams the echo server answered.
    pub echoed: u64,
    /// 64-byte datagrams the UDP sink counted.
    pub flood_received: u64,
    /// Bytes the TCP sink received (each checked), and their FNV-1a.
    pub sink_bytes: u64,
    pub sink_hash: u64,
    /// Bytes the TCP source sent.
    pub source_bytes: u64,
}

/// The running servers.
#[derive(Debug)]
pub struct HostPeer {
    stop: Arc<AtomicBool>,
    echo: JoinHandle<Result<u64>>,
    flood: JoinHandle<Result<u64>>,
    sink: JoinHandle<Result<(u64, u64)>>,
    source: JoinHandle<Result<u64>>,
}

fn host(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(HOST_IP), port)
}

impl HostPeer {
    /// Binds every server inside `ns` and starts them; the TCP source will send `source_bytes`.
    pub fn start(ns: &Netns, source_bytes: u64) -> Result<Self> {
        let (echo, flood, sink, source) = ns.run(|| -> Result<_> {
            Ok((
                UdpSocket::bind(host(ECHO_PORT)).context("bind the UDP echo")?,
                UdpSocket::bind(host(FLOOD_PORT)).context("bind the UDP sink")?,
                TcpListener::bind(host(TCP_SINK_PORT)).context("bind the TCP sink")?,
                TcpListener::bind(host(TCP_SOURCE_PORT)).context("bind the TCP source")?,
            ))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let spawn = |name: &str| std::thread::Builder::new().name(name.to_string());
        let s = stop.clone();
        let echo = spawn("peer-echo").spawn(move || echo_server(&echo, &s))?;
        let s = stop.clone();
        let flood = spawn("peer-flood").spawn(move || flood_sink(&flood, &s))?;
        let s = stop.clone();
        let sink = spawn("peer-tcp-sink").spawn(move || tcp_sink(&sink, &s))?;
        let s = stop.clone();
        let source =
            spawn("peer-tcp-source").spawn(move || tcp_source(&source, source_bytes, &s))?;
        Ok(Self {
            stop,
            echo,
            flood,
            sink,
            source,
        })
    }

    /// Stops the servers and reports what they saw (the first server error, if any).
    pub fn finish(self) -> Result<PeerReport> {
        self.stop.store(true, Ordering::Release);
        fn join<T>(h: JoinHandle<Result<T>>, what: &str) -> Result<T> {
            h.join()
                .map_err(|_| anyhow::anyhow!("the {what} panicked"))?
                .with_context(|| format!("the host's {what}"))
        }
        let echoed = join(self.echo, "UDP echo")?;
        let flood_received = join(self.flood, "UDP sink")?;
        let (sink_bytes, sink_hash) = join(self.sink, "TCP sink")?;
        let source_bytes = join(self.source, "TCP source")?;
        Ok(PeerReport {
            echoed,
            flood_received,
            sink_bytes,
            sink_hash,
            source_bytes,
        })
    }
}

/// Runs until the stop flag or [`PEER_WAIT`].
struct Clock {
    deadline: Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            deadline: Instant::now() + PEER_WAIT,
        }
    }

    fn done(&self, stop: &AtomicBool) -> bool {
        stop.load(Ordering::Acquire) || Instant::now() > self.deadline
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn echo_server(socket: &UdpSocket, stop: &AtomicBool) -> Result<u64> {
    socket.set_read_timeout(Some(TICK))?;
    let clock = Clock::new();
    let mut buf = [0u8; 2048];
    let mut echoed = 0u64;
    while !clock.done(stop) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                socket.send_to(&buf[..n], from)?;
                echoed += 1;
            }
            Err(e) if timed_out(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(echoed)
}

fn flood_sink(socket: &UdpSocket, stop: &AtomicBool) -> Result<u64> {
    socket.set_read_timeout(Some(TICK))?;
    let clock = Clock::new();
    let mut buf = [0u8; 2048];
    let mut received = 0u64;
    while !clock.done(stop) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == b"end" => {
                socket.send_to(b"done", from)?;
            }
            Ok((n, _)) if n == DATAGRAM => received += 1,
            Ok((n, _)) => bail!("a {n}-byte datagram in the flood"),
            Err(e) if timed_out(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(received)
}

/// The next connection, or `None` once stopped.
fn accept(listener: &TcpListener, clock: &Clock, stop: &AtomicBool) -> Result<Option<TcpStream>> {
    listener.set_nonblocking(true)?;
    while !clock.done(stop) {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false)?;
                conn.set_read_timeout(Some(TICK))?;
                conn.set_write_timeout(Some(TICK))?;
                return Ok(Some(conn));
            }
            Err(e) if timed_out(&e) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

fn tcp_sink(listener: &TcpListener, stop: &AtomicBool) -> Result<(u64, u64)> {
    let clock = Clock::new();
    let Some(mut conn) = accept(listener, &clock, stop)? else {
        return Ok((0, FNV_START));
    };
    let mut buf = vec![0u8; 256 << 10];
    let (mut got, mut hash) = (0u64, FNV_START);
    // Reads until the guest closes (or the run is over: what came so far is reported).
    while !clock.done(stop) {
        let n = match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if timed_out(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        if let Some(i) = (0..n).find(|&i| buf[i] != pattern(got + i as u64)) {
            bail!(
                "the guest's byte {} differs from the pattern",
                got + i as u64
            );
        }
        hash = fnv1a(hash, &buf[..n]);
        got += n as u64;
    }
    Ok((got, hash))
}

fn tcp_source(listener: &TcpListener, bytes: u64, stop: &AtomicBool) -> Result<u64> {
    let clock = Clock::new();
    let Some(mut conn) = accept(listener, &clock, stop)? else {
        return Ok(0);
    };
    let mut buf = vec![0u8; 256 << 10];
    let mut sent = 0u64;
    while sent < bytes && !clock.done(stop) {
        let n = buf.len().min((bytes - sent) as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(sent + i as u64);
        }
        let mut at = 0;
        while at < n && !clock.done(stop) {
            match conn.write(&buf[at..n]) {
                Ok(w) => at += w,
                Err(e) if timed_out(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        sent += at as u64;
    }
    // Closing is the end of the stream for the guest.
    drop(conn);
    Ok(sent)
}

/// FNV-1a of the first `bytes` of the pattern (what the guest must report receiving).
pub fn pattern_hash(bytes: u64) -> u64 {
    let mut hash = FNV_START;
    let mut chunk = vec![0u8; 64 << 10];
    let mut at = 0u64;
    while at < bytes {
        let n = chunk.len().min((bytes - at) as usize);
        for (i, b) in chunk[..n].iter_mut().enumerate() {
            *b = pattern(at + i as u64);
        }
        hash = fnv1a(hash, &chunk[..n]);
        at += n as u64;
    }
    hash
}
