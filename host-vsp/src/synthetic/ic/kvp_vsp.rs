//! The KVP exchange IC device: [`KvpVsp`] serves the channel with [`KvpHost`]'s protocol, one
//! transaction at a time. Once the versions are agreed it enumerates the guest's intrinsic pool
//! ([`KvpPool::AUTO`]: index 0, 1, ... until a non-zero status) and keeps the values; after that it
//! runs what [`KvpHandle`] asks (enumerate a pool again, get, set or delete a key), each call waiting
//! for its answer. A guest that does not answer in [`TRANSACTION_TIMEOUT`] fails that call only; one
//! that lies gets its answer refused and counted — it stops only its own IC.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ic_protocol::kvp::KvpPool;
use vmbus::protocol::{interface, Guid};
use vmbus::server::OfferConfig;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::synthetic::ic::kvp::{KvpEvent, KvpHost, KvpRequest, MAX_REQUEST};
use crate::synthetic::ic::link::{self, Published};
use crate::vmbus_service::{HostChannel, HostChannelStats, VmbusDevice, Wake};

/// How long the guest has to answer one transaction.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Most values one enumeration collects (a guest that never says "no more" is cut off there).
pub const MAX_ENUMERATED: u32 = 256;
/// Most calls waiting to run.
pub const MAX_QUEUED: usize = 64;

/// What the KVP channel has done so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KvpState {
    /// The guest answered the version negotiation.
    pub negotiated: bool,
    /// The message version agreed.
    pub version: Option<(u16, u16)>,
    /// The guest's intrinsic values ([`KvpPool::AUTO`]) as last enumerated.
    pub guest_values: Vec<(String, String)>,
    /// Enumerations of the AUTO pool completed.
    pub enumerations: u64,
    /// Transactions the guest answered correctly.
    pub transactions: u64,
    /// Transactions the guest did not answer in time.
    pub timeouts: u64,
    /// Answers refused and other protocol errors.
    pub errors: u64,
    pub last_error: Option<String>,
    /// The channel's counters.
    pub channel: HostChannelStats,
    /// The channel is open and being served.
    pub serving: bool,
}

/// The answer to a [`KvpHandle`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KvpReply {
    Values(Vec<(String, String)>),
    Value(Option<String>),
    Done(bool),
}

/// Why a [`KvpHandle`] call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvpCallError {
    #[error("the guest has not opened the KVP channel (or not negotiated it)")]
    NotServing,
    #[error("{MAX_QUEUED} KVP calls are already waiting")]
    Busy,
    #[error("the guest did not answer the KVP request in time")]
    Timeout,
    #[error("the guest's KVP answer was refused: {0}")]
    Guest(String),
    #[error("the guest did not {0}")]
    Refused(&'static str),
    #[error("the KVP request cannot be sent: {0}")]
    BadRequest(String),
}

#[derive(Debug, Clone)]
enum Command {
    Enumerate(KvpPool),
    Single(KvpRequest),
}

#[derive(Debug, Default, Clone)]
struct Calls {
    next_id: u64,
    /// Calls whose caller still waits for the result.
    waiting: std::collections::BTreeSet<u64>,
    queue: VecDeque<(u64, Command)>,
    results: BTreeMap<u64, Result<KvpReply, KvpCallError>>,
}

/// The host's handle on the guest's KVP exchange: read its values, get, set and delete keys.
#[derive(Debug)]
pub struct KvpHandle {
    state: Published<KvpState>,
    calls: Published<Calls>,
    doorbell: EventFd,
}

impl KvpHandle {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            state: Published::default(),
            calls: Published::default(),
            doorbell: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// A copy of the channel's state.
    pub fn state(&self) -> KvpState {
        self.state.snapshot()
    }

    /// Wait until the state satisfies `done` (or `timeout` passes: `None`).
    pub fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&KvpState) -> bool,
    ) -> Option<KvpState> {
        self.state.wait_until(timeout, done)
    }

    /// The guest's intrinsic values as last enumerated (empty before the first enumeration).
    pub fn guest_values(&self) -> Vec<(String, String)> {
        self.state.lock().guest_values.clone()
    }

    fn call(&self, command: Command, timeout: Duration) -> Result<KvpReply, KvpCallError> {
        if !self.state.lock().negotiated {
            return Err(KvpCallError::NotServing);
        }
        let id = self.calls.update(|c| {
            if c.queue.len() >= MAX_QUEUED {
                return None;
            }
            c.next_id += 1;
            c.queue.push_back((c.next_id, command));
            c.waiting.insert(c.next_id);
            Some(c.next_id)
        });
        let id = id.ok_or(KvpCallError::Busy)?;
        let _ = self.doorbell.write(1);
        let done = self.calls.wait_until(timeout + TRANSACTION_TIMEOUT, |c| {
            c.results.contains_key(&id)
        });
        self.calls.update(|c| {
            c.queue.retain(|(queued, _)| *queued != id);
            c.waiting.remove(&id);
            c.results.remove(&id)
        });
        match done {
            Some(mut c) => c.results.remove(&id).unwrap_or(Err(KvpCallError::Timeout)),
            None => Err(KvpCallError::Timeout),
        }
    }

    /// Enumerate `pool` again (the AUTO pool's values also replace [`guest_values`](Self::guest_values)).
    pub fn enumerate(
        &self,
        pool: KvpPool,
        timeout: Duration,
    ) -> Result<Vec<(String, String)>, KvpCallError> {
        match self.call(Command::Enumerate(pool), timeout)? {
            KvpReply::Values(values) => Ok(values),
            _ => Err(KvpCallError::Refused("enumerate")),
        }
    }

    /// The value of `key` in the guest's `pool`, `None` if it has none.
    pub fn get(
        &self,
        pool: KvpPool,
        key: &str,
        timeout: Duration,
    ) -> Result<Option<String>, KvpCallError> {
        let request = KvpRequest::Get {
            pool,
            key: key.into(),
        };
        match self.call(Command::Single(request), timeout)? {
            KvpReply::Value(value) => Ok(value),
            _ => Err(KvpCallError::Refused("get")),
        }
    }

    /// Set `key` = `value` in the guest's `pool`.
    pub fn push(
        &self,
        pool: KvpPool,
        key: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<(), KvpCallError> {
        let request = KvpRequest::Set {
            pool,
            key: key.into(),
            value: value.into(),
        };
        match self.call(Command::Single(request), timeout)? {
            KvpReply::Done(true) => Ok(()),
            _ => Err(KvpCallError::Refused("store the key")),
        }
    }

    /// Remove `key` from the guest's `pool`; whether it was there.
    pub fn delete(
        &self,
        pool: KvpPool,
        key: &str,
        timeout: Duration,
    ) -> Result<bool, KvpCallError> {
        let request = KvpRequest::Delete {
            pool,
            key: key.into(),
        };
        match self.call(Command::Single(request), timeout)? {
            KvpReply::Done(found) => Ok(found),
            _ => Err(KvpCallError::Refused("delete")),
        }
    }
}

/// The transaction(s) of one call in progress.
#[derive(Debug)]
struct Job {
    /// The call's id (`None`: the VSP's own enumeration after negotiation).
    id: Option<u64>,
    command: Command,
    /// Enumeration: the next index and what was found so far.
    next: u32,
    found: Vec<(String, String)>,
    /// When its current transaction was sent (`None`: the next one is still to send).
    sent: Option<Instant>,
}

/// The KVP exchange IC device.
#[derive(Debug)]
pub struct KvpVsp {
    instance: Guid,
    handle: Arc<KvpHandle>,
}

impl KvpVsp {
    /// The KVP IC with offer instance `instance`.
    pub fn new(instance: Guid) -> std::io::Result<Self> {
        Ok(Self {
            instance,
            handle: Arc::new(KvpHandle::new()?),
        })
    }

    /// The host's handle on it.
    pub fn handle(&self) -> Arc<KvpHandle> {
        self.handle.clone()
    }

    fn fail(&self, what: impl std::fmt::Display) {
        tracing::debug!(%what, "KVP IC error");
        self.handle.state.update(|s| {
            s.errors += 1;
            s.last_error = Some(what.to_string());
        });
    }

    fn finish(&self, job: Job, result: Result<KvpReply, KvpCallError>) {
        if let (Command::Enumerate(KvpPool::AUTO), Ok(KvpReply::Values(values))) =
            (&job.command, &result)
        {
            self.handle.state.update(|s| {
                s.guest_values = values.clone();
                s.enumerations += 1;
            });
        }
        if let Some(id) = job.id {
            self.handle.calls.update(|c| {
                // Only a call still waiting takes its result.
                if c.waiting.contains(&id) {
                    c.results.insert(id, result);
                }
            });
        }
    }

    /// Apply one answer to the job in progress; returns the job if it goes on.
    fn advance(&self, mut job: Job, event: KvpEvent) -> Option<Job> {
        job.sent = None;
        let reply = match event {
            KvpEvent::Enumerated(Some(kv)) => {
                job.found.push(kv);
                job.next += 1;
                if job.next >= MAX_ENUMERATED {
                    self.fail(format_args!(
                        "the guest enumerates more than {MAX_ENUMERATED} values"
                    ));
                    let found = std::mem::take(&mut job.found);
                    self.finish(job, Ok(KvpReply::Values(found)));
                    return None;
                }
                return Some(job);
            }
            KvpEvent::Enumerated(None) => KvpReply::Values(std::mem::take(&mut job.found)),
            KvpEvent::Value(v) => KvpReply::Value(v),
            KvpEvent::Done(b) => KvpReply::Done(b),
            KvpEvent::Negotiated(_) => return Some(job),
        };
        self.finish(job, Ok(reply));
        None
    }

    fn idle(&self, channel: &mut HostChannel) {
        channel.signals.idle_until_stopped();
        self.stopped();
    }

    /// Fail every waiting call and mark the channel down.
    fn stopped(&self) {
        self.handle.calls.update(|c| {
            let queued: Vec<u64> = c.queue.drain(..).map(|(id, _)| id).collect();
            for id in queued {
                if c.waiting.contains(&id) {
                    c.results.insert(id, Err(KvpCallError::NotServing));
                }
            }
        });
        self.handle.state.update(|s| {
            s.serving = false;
            s.negotiated = false;
        });
    }
}

impl VmbusDevice for KvpVsp {
    fn name(&self) -> &str {
        "kvp"
    }

    fn offer(&self) -> OfferConfig {
        OfferConfig::new(interface::KVP, self.instance)
    }

    fn serve(&self, mut channel: HostChannel) {
        let mut host = KvpHost::new();
        let mut request = vec![0u8; MAX_REQUEST];
        let mut packet = vec![0u8; MAX_REQUEST + 64];
        let mut trans_id = 1u64;
        let mut job: Option<Job> = None;
        self.handle.state.update(|s| s.serving = true);
        let Ok(n) = host.negotiate_request(&mut request) else {
            return self.idle(&mut channel);
        };
        if let Err(e) = link::send(&mut channel, trans_id, &request[..n]) {
            self.fail(format_args!("outbound ring: {e}"));
            return self.idle(&mut channel);
        }
        loop {
            let mut events = Vec::new();
            let more = match link::drain(&mut channel, &mut packet, |payload| {
                events.push(host.handle_response(payload));
            }) {
                Ok(more) => more,
                Err(e) => {
                    self.fail(format_args!("inbound ring: {e}"));
                    if e.is_fatal() {
                        return self.idle(&mut channel);
                    }
                    false
                }
            };
            let stats = channel.stats();
            self.handle.state.update(|s| s.channel = stats);
            for event in events {
                match event {
                    Ok(KvpEvent::Negotiated(n)) => {
                        self.handle.state.update(|s| {
                            s.negotiated = true;
                            s.version = Some((n.message.major.get(), n.message.minor.get()));
                        });
                        job.get_or_insert(Job {
                            id: None,
                            command: Command::Enumerate(KvpPool::AUTO),
                            next: 0,
                            found: Vec::new(),
                            sent: None,
                        });
                    }
                    Ok(event) => {
                        self.handle.state.update(|s| s.transactions += 1);
                        job = job.and_then(|j| self.advance(j, event));
                    }
                    Err(e) => {
                        // An answer that consumed the pending transaction fails its call.
                        if host.pending().is_none()
                            && job.as_ref().is_some_and(|j| j.sent.is_some())
                        {
                            if let Some(j) = job.take() {
                                self.finish(j, Err(KvpCallError::Guest(e.to_string())));
                            }
                        }
                        self.fail(e);
                    }
                }
            }
            // A transaction the guest sits on fails its call; the channel goes on.
            if job
                .as_ref()
                .and_then(|j| j.sent)
                .is_some_and(|t| t.elapsed() >= TRANSACTION_TIMEOUT)
            {
                host.abandon();
                self.handle.state.update(|s| s.timeouts += 1);
                self.fail("the guest did not answer a KVP request in time");
                if let Some(j) = job.take() {
                    self.finish(j, Err(KvpCallError::Timeout));
                }
            }
            if host.negotiated().is_some() && host.pending().is_none() {
                if job.is_none() {
                    job = self
                        .handle
                        .calls
                        .update(|c| c.queue.pop_front())
                        .map(|(id, command)| Job {
                            id: Some(id),
                            command,
                            next: 0,
                            found: Vec::new(),
                            sent: None,
                        });
                }
                if let Some(j) = job.as_mut().filter(|j| j.sent.is_none()) {
                    let req = match &j.command {
                        Command::Enumerate(pool) => KvpRequest::Enumerate {
                            pool: *pool,
                            index: j.next,
                        },
                        Command::Single(r) => r.clone(),
                    };
                    match host.request(req, &mut request) {
                        Ok(n) => {
                            trans_id += 1;
                            if let Err(e) = link::send(&mut channel, trans_id, &request[..n]) {
                                self.fail(format_args!("outbound ring: {e}"));
                                if e.is_fatal() {
                                    return self.idle(&mut channel);
                                }
                                host.abandon();
                            }
                            j.sent = Some(Instant::now());
                        }
                        Err(e) => {
                            // A request that cannot be built (a key too long) fails only its call.
                            let text = e.to_string();
                            if let Some(j) = job.take() {
                                self.finish(j, Err(KvpCallError::BadRequest(text)));
                            }
                        }
                    }
                }
            }
            if channel.is_stopped() {
                break;
            }
            if more {
                continue;
            }
            let (wake, bell) = channel
                .signals
                .wait_with(&[&self.handle.doorbell], Duration::from_millis(20));
            if bell {
                let _ = self.handle.doorbell.read();
            }
            if wake == Wake::Stopped {
                break;
            }
        }
        self.stopped();
    }
}
