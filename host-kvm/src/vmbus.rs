//! The VMBus service on a hypervisor-lite partition: the guest's HvPostMessage posts to the message
//! connection ids reach [`VmbusService::handle_post`], and the service's [`Synic`] is the partition's
//! emulated SynIC (message slots, event flags, SINT injection) with one doorbell event fd per channel
//! connection id (HvSignalEvent through KVM_IOEVENTFD: no user exit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use host_vsp::vmbus_service::{
    EventDelivery, ServiceConfig, ServiceError, Synic, SynicError, VmbusDevice, VmbusService,
};
use hypervisor_lite::hv::hypercall::HvStatus;
use hypervisor_lite::hv::synic::EventDelivery as HvEventDelivery;
use hypervisor_lite::hv::{HvError, HvPartition};
use hypervisor_lite::GuestRam;
use vmbus::protocol::{Version, MESSAGE_CONNECTION_IDS};
use vmm_sys_util::eventfd::EventFd;

/// Why the VMBus service could not be attached to the partition.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("enlightenments")]
    Hv(#[from] HvError),
    #[error("VMBus service")]
    Service(#[from] ServiceError),
}

/// hypervisor-lite's SynIC as the VMBus service's [`Synic`].
pub struct KvmSynic {
    hv: Arc<HvPartition>,
    /// One doorbell per connection id, kept for the partition's life: a relid (and so its default
    /// connection id) is reused after a rescind, and the doorbell with it.
    events: Mutex<HashMap<u32, EventFd>>,
}

impl std::fmt::Debug for KvmSynic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmSynic").finish_non_exhaustive()
    }
}

impl KvmSynic {
    /// The SynIC of `hv` (attached to its partition).
    pub fn new(hv: Arc<HvPartition>) -> Self {
        Self {
            hv,
            events: Mutex::new(HashMap::new()),
        }
    }
}

fn synic_error(error: impl std::error::Error + Send + Sync + 'static) -> SynicError {
    SynicError(Box::new(error))
}

impl Synic for KvmSynic {
    fn post_message(
        &self,
        vp: u32,
        sint: u8,
        message_type: u32,
        payload: &[u8],
    ) -> Result<(), SynicError> {
        self.hv
            .post_message(vp, sint, message_type, payload)
            .map(|_| ())
            .map_err(synic_error)
    }

    fn signal_event(&self, vp: u32, sint: u8, flag: u32) -> Result<EventDelivery, SynicError> {
        match self.hv.signal_event(vp, sint, flag).map_err(synic_error)? {
            HvEventDelivery::Set => Ok(EventDelivery::Set),
            HvEventDelivery::AlreadySet => Ok(EventDelivery::AlreadySet),
            HvEventDelivery::NotEnabled => Ok(EventDelivery::NotEnabled),
        }
    }

    fn event_for(&self, connection_id: u32) -> Result<EventFd, SynicError> {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(event) = events.get(&connection_id) {
            return event.try_clone().map_err(synic_error);
        }
        let event = self.hv.register_event(connection_id).map_err(synic_error)?;
        let for_caller = event.try_clone().map_err(synic_error)?;
        events.insert(connection_id, event);
        Ok(for_caller)
    }
}

/// Start the VMBus service of the partition whose enlightenments are `hv` (attached) and whose RAM is
/// `ram`, offering `devices`; `versions` empty allows every version. The guest's posts to the
/// message connection ids are answered by the service from now on.
pub fn start_vmbus(
    hv: &Arc<HvPartition>,
    ram: &GuestRam,
    versions: &[Version],
    devices: Vec<Arc<dyn VmbusDevice>>,
) -> Result<Arc<VmbusService>, AttachError> {
    let config = ServiceConfig {
        vp_count: hv.config().vp_count,
        versions: versions.to_vec(),
    };
    let memory = ram.memory().clone();
    let synic = Arc::new(KvmSynic::new(hv.clone()));
    let service = VmbusService::start(config, memory, synic, devices)?;
    for connection_id in MESSAGE_CONNECTION_IDS {
        let weak: Weak<VmbusService> = Arc::downgrade(&service);
        hv.register_post_message(
            connection_id,
            Arc::new(
                move |vp, message_type, payload: &[u8]| match weak.upgrade() {
                    Some(service) => {
                        HvStatus(service.handle_post(connection_id, vp, message_type, payload))
                    }
                    None => HvStatus::INVALID_CONNECTION_ID,
                },
            ),
        )?;
    }
    Ok(service)
}
