//! The `vmbus` kit: a synthetic SCSI controller (storvsp) offered on the host's VMBus service, served
//! to the guest's storvsc — requests and completions through shared-memory rings, guest→host signals
//! through ioeventfd, host→guest interrupts through the SynIC, each only when the ring rules need one.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use host_vsp::synthetic::storvsp::device::StorvspDevice;
use host_vsp::synthetic::storvsp::{LunMap, StorvspConfig};
use host_vsp::vmbus_service::{VmbusDevice, VmbusService};
use vmbus::protocol::Guid;

use super::{Backend, DeviceKit};
use crate::GuestVmConfig;

/// Instance GUID of the testbed's SCSI controller.
pub const CONTROLLER_INSTANCE: Guid =
    Guid::new(0x7669_7269, 0x5343, 0x5349, [0, 0, 0, 0, 0, 0, 0, 1]);

/// The VMBus storage path (storvsc ↔ storvsp).
#[derive(Debug, Default)]
pub struct VmbusKit {
    /// The service of the partition being benchmarked (its post handlers hold it only weakly).
    service: Arc<Mutex<Option<Arc<VmbusService>>>>,
}

impl DeviceKit for VmbusKit {
    fn name(&self) -> &str {
        "vmbus"
    }

    fn guest_name(&self) -> &str {
        "vmbus"
    }

    fn configure(&self, config: &mut GuestVmConfig, backend: Backend) -> Result<()> {
        let slot = self.service.clone();
        config.attach(move |partition, hv| {
            let device = StorvspDevice::new(
                CONTROLLER_INSTANCE,
                LunMap::new().with_backend(0, backend),
                StorvspConfig::default(),
                partition.ram().memory().clone(),
            );
            let devices: Vec<Arc<dyn VmbusDevice>> = vec![Arc::new(device)];
            let service = VmbusService::start(hv.clone(), partition.ram().clone(), &[], devices)?;
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(service);
            Ok(())
        });
        Ok(())
    }
}
