//! A [`Synic`] with no hypervisor behind it: posted messages queue up per VP and SINT for the test
//! to deliver, event-flag signals are recorded, and every connection id gets a real [`EventFd`] (the
//! same one again when the id is asked for again), which the test writes to play HvSignalEvent. A
//! test may also react to every signal on the signalling thread ([`FakeSynic::on_signal`]), e.g. to
//! play a guest that answers an interrupt at once.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::super::{EventDelivery, Synic, SynicError};

/// One message the service posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub vp: u32,
    pub sint: u8,
    pub message_type: u32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    queues: BTreeMap<(u32, u8), VecDeque<Posted>>,
    signals: Vec<(u32, u8, u32)>,
    events: BTreeMap<u32, EventFd>,
    /// Connection ids asked for, in order (repeats included).
    event_requests: Vec<u32>,
    fail_event_for: bool,
}

/// What a test runs on every `signal_event` (with the event flag).
pub type SignalHook = Arc<dyn Fn(u32) + Send + Sync>;

/// See the module documentation.
#[derive(Default)]
pub struct FakeSynic {
    state: Mutex<State>,
    changed: Condvar,
    hook: Mutex<Option<SignalHook>>,
}

impl std::fmt::Debug for FakeSynic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSynic")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl FakeSynic {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every queued message, VP/SINT queue by queue, oldest first; the queues are left empty.
    pub fn take_messages(&self) -> Vec<Posted> {
        let mut state = self.lock();
        state.queues.values_mut().flat_map(std::mem::take).collect()
    }

    /// The VP/SINT pairs that have had messages queued (and may still have).
    pub fn queues(&self) -> Vec<(u32, u8)> {
        self.lock().queues.keys().copied().collect()
    }

    /// Sleep until a message is queued or an event flag set (or `timeout` passes).
    pub fn wait_for_activity(&self, timeout: Duration) {
        let state = self.lock();
        if state.queues.values().any(|q| !q.is_empty()) {
            return;
        }
        let _ = self.changed.wait_timeout(state, timeout);
    }

    /// `(vp, sint, flag)` of every `signal_event`, in order.
    pub fn signals(&self) -> Vec<(u32, u8, u32)> {
        self.lock().signals.clone()
    }

    /// Connection ids `event_for` was asked for, in order.
    pub fn event_requests(&self) -> Vec<u32> {
        self.lock().event_requests.clone()
    }

    /// Make `event_for` fail from now on (or work again).
    pub fn fail_event_for(&self, fail: bool) {
        self.lock().fail_event_for = fail;
    }

    /// Run `hook` on every later `signal_event`, on the signalling (device) thread; `None` stops it.
    pub fn on_signal(&self, hook: Option<SignalHook>) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// The guest's HvSignalEvent on `connection_id`.
    pub fn signal_host(&self, connection_id: u32) {
        let state = self.lock();
        let event = state
            .events
            .get(&connection_id)
            .unwrap_or_else(|| panic!("no event fd for connection id {connection_id:#x}"));
        event.write(1).unwrap();
    }
}

impl Synic for FakeSynic {
    fn post_message(
        &self,
        vp: u32,
        sint: u8,
        message_type: u32,
        payload: &[u8],
    ) -> Result<(), SynicError> {
        self.lock()
            .queues
            .entry((vp, sint))
            .or_default()
            .push_back(Posted {
                vp,
                sint,
                message_type,
                bytes: payload.to_vec(),
            });
        self.changed.notify_all();
        Ok(())
    }

    fn signal_event(&self, vp: u32, sint: u8, flag: u32) -> Result<EventDelivery, SynicError> {
        self.lock().signals.push((vp, sint, flag));
        self.changed.notify_all();
        let hook = self.hook.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(hook) = hook {
            hook(flag);
        }
        Ok(EventDelivery::Set)
    }

    fn event_for(&self, connection_id: u32) -> Result<EventFd, SynicError> {
        let mut state = self.lock();
        state.event_requests.push(connection_id);
        if state.fail_event_for {
            return Err(SynicError("event_for told to fail".into()));
        }
        let event = match state.events.entry(connection_id) {
            Entry::Occupied(event) => event.into_mut(),
            Entry::Vacant(slot) => {
                slot.insert(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| SynicError(Box::new(e)))?)
            }
        };
        event.try_clone().map_err(|e| SynicError(Box::new(e)))
    }
}
