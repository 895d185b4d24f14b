//! The two baselines VMBus is compared with, on the same disk backends:
//! - `ide`: an IDE/ATA disk emulated register by register (polled PIO, `rep insw/outsw`), as an
//!   unenlightened guest drives its boot disk — every register access is an exit;
//! - `virtio`: virtio-blk over virtio-mmio done the way a good modern VMM does it — notifications
//!   through a KVM ioeventfd, completions through an irqfd MSI, EVENT_IDX suppression.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use host_kvm::ide::KvmIde;
use host_kvm::virtio_blk::{KvmVirtioBlk, VirtioBlkPlacement};
use host_vsp::emulated::ide::IdeController;
use host_vsp::virtio::blk::{VirtioBlkConfig, VirtioBlkDevice};

use super::{Backend, DeviceKit};
use crate::GuestVmConfig;

/// The emulated IDE disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdeKit;

impl DeviceKit for IdeKit {
    fn name(&self) -> &str {
        "ide"
    }

    fn guest_name(&self) -> &str {
        "ide"
    }

    fn configure(&self, config: &mut GuestVmConfig, backend: Backend) -> Result<()> {
        let ide = KvmIde::new(Arc::new(IdeController::new(backend)));
        config.configure(move |pc| {
            ide.register(pc);
            Ok(())
        });
        Ok(())
    }
}

/// virtio-blk with ioeventfd notifications, irqfd interrupts and EVENT_IDX.
#[derive(Debug, Default)]
pub struct VirtioKit {
    /// The device of the partition being benchmarked (its worker stops when it is dropped).
    device: Arc<Mutex<Option<Arc<VirtioBlkDevice>>>>,
    /// Both ends poll (`virtio-poll`).
    poll: bool,
}

impl VirtioKit {
    /// Both ends poll: the device worker with the driver's notifications suppressed, the driver
    /// with used-buffer notifications suppressed while requests are in flight.
    pub fn polling() -> Self {
        Self {
            device: Arc::default(),
            poll: true,
        }
    }

    /// The device of the last guest configured with this kit (its counters cover that whole boot).
    pub fn device(&self) -> Option<Arc<VirtioBlkDevice>> {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl DeviceKit for VirtioKit {
    fn name(&self) -> &str {
        if self.poll {
            "virtio-poll"
        } else {
            "virtio"
        }
    }

    fn guest_name(&self) -> &str {
        self.name()
    }

    fn configure(&self, config: &mut GuestVmConfig, backend: Backend) -> Result<()> {
        let device_config = VirtioBlkConfig {
            poll_mode: self.poll,
            ..VirtioBlkConfig::default()
        };
        let device = Arc::new(VirtioBlkDevice::new(backend, device_config)?);
        *self.device.lock().unwrap_or_else(|e| e.into_inner()) = Some(device.clone());
        let kvm = KvmVirtioBlk::new(device, VirtioBlkPlacement::default());
        let for_attach = kvm.clone();
        config.configure(move |pc| {
            kvm.register(pc);
            Ok(())
        });
        config.attach(move |partition, _| {
            for_attach.attach(partition)?;
            Ok(())
        });
        Ok(())
    }
}
