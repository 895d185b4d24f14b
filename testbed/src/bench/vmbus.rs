//! The `vmbus` kit: a synthetic SCSI controller (storvsp) offered on the host's VMBus service, served
//! to the guest's storvsc — requests and completions through shared-memory rings, guest→host signals
//! through ioeventfd, host→guest interrupts through the SynIC, each only when the ring rules need one.
//! On a guest with several vCPUs the controller is multi-channel: a channel per vCPU, each
//! interrupting its own VP.

use std::sync::Arc;

use anyhow::Result;
use host_vsp::synthetic::storvsp::{LunMap, StorvspConfig, StorvspDevice};
use vmbus::protocol::Guid;

use super::{Backend, DeviceKit};
use crate::GuestVmConfig;

/// Instance GUID of the testbed's SCSI controller.
pub const CONTROLLER_INSTANCE: Guid =
    Guid::new(0x7669_7269, 0x5343, 0x5349, [0, 0, 0, 0, 0, 0, 0, 1]);

/// The VMBus storage path (storvsc ↔ storvsp).
#[derive(Debug, Default)]
pub struct VmbusKit {
    /// How the controller serves its channel.
    pub config: StorvspConfig,
}

impl VmbusKit {
    /// Both ends poll: storvsp keeps the guest's signals suppressed while it finds work, storvsc
    /// takes completions with the host's interrupts suppressed while requests are outstanding.
    pub fn polling() -> Self {
        Self {
            config: StorvspConfig {
                poll_mode: true,
                ..StorvspConfig::default()
            },
        }
    }
}

impl DeviceKit for VmbusKit {
    fn name(&self) -> &str {
        if self.config.poll_mode {
            "vmbus-poll"
        } else {
            "vmbus"
        }
    }

    fn guest_name(&self) -> &str {
        self.name()
    }

    /// A multi-channel controller on a guest with several vCPUs: configured with one sub-channel
    /// per AP (at least), so the guest opens the primary channel plus one sub-channel per AP.
    fn configure(&self, config: &mut GuestVmConfig, backend: Backend) -> Result<()> {
        let aps = u16::try_from(config.vcpus.saturating_sub(1)).unwrap_or(u16::MAX);
        let storvsp = StorvspConfig {
            max_sub_channels: self.config.max_sub_channels.max(aps),
            ..self.config.clone()
        };
        config.vmbus_device(Arc::new(StorvspDevice::new(
            CONTROLLER_INSTANCE,
            LunMap::new().with_backend(0, backend),
            storvsp,
        )));
        Ok(())
    }

    /// One channel per vCPU: the primary on VP 0, a sub-channel on every AP.
    fn channels(&self, vcpus: u32) -> u32 {
        vcpus.max(1)
    }
}
