//! What the time-sync and KVP VSPs share: [`Published`], a state other threads read and wait on,
//! and the channel plumbing of one IC request/response exchange — [`send`] one request packet (and
//! interrupt the guest if it needs it), [`drain`] the guest's answers.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmbus::packet::PacketFlags;
use vmbus::ring::RingError;

use crate::vmbus_service::HostChannel;

/// A state the device thread updates and other threads read or wait on.
#[derive(Debug, Default)]
pub struct Published<T> {
    state: Mutex<T>,
    changed: Condvar,
}

impl<T: Clone> Published<T> {
    /// A state starting as `state`.
    pub fn new(state: T) -> Self {
        Self {
            state: Mutex::new(state),
            changed: Condvar::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, T> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the state and wake every waiter.
    pub(super) fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let r = f(&mut self.lock());
        self.changed.notify_all();
        r
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> T {
        self.lock().clone()
    }

    /// Wait until `done` holds (returns the state) or `timeout` passes (returns `None`).
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&T) -> bool) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if done(&state) {
                return Some(state.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Write `message` as one in-band request packet with transaction id `trans_id`, interrupting
/// the guest if the ring was empty. A non-fatal ring error (the ring is full) is returned as is: the
/// caller drops the request and counts it.
pub(super) fn send(
    channel: &mut HostChannel,
    trans_id: u64,
    message: &[u8],
) -> Result<(), RingError> {
    let written =
        channel
            .outbound
            .write_inband(trans_id, PacketFlags::COMPLETION_REQUESTED, &[message])?;
    if written.signal {
        channel.notify_guest();
    }
    Ok(())
}

/// Hand every answer waiting in the guest→host ring (at most 256) to `f` as the packet's payload;
/// signals the guest if the ring asks for it. Returns whether more are waiting.
pub(super) fn drain(
    channel: &mut HostChannel,
    packet: &mut [u8],
    mut f: impl FnMut(&[u8]),
) -> Result<bool, RingError> {
    let drained = channel.inbound.drain(packet, 256, |info, bytes| {
        f(bytes.get(info.data_offset()..).unwrap_or(&[]));
    })?;
    if drained.signal {
        channel.notify_guest();
    }
    Ok(drained.more)
}
