//! The driver side of the virtio-mmio transport, version 2 (virtio 1.x §4.2.2): 32-bit register access to a
//! device's window, the initialisation sequence of §3.1.1 (reset, ACKNOWLEDGE, DRIVER, feature negotiation
//! with FEATURES_OK read back, queue setup, DRIVER_OK), configuration-space reads under the generation
//! counter, and the queue doorbell. Every register access traps to the host, so only the doorbell
//! ([`MmioTransport::notify`]) belongs on a data path. The volatile register access is the only unsafe code.

use core::ptr::NonNull;

use super::features;

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Register offsets.
pub mod regs {
    pub const MAGIC: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC_LOW: usize = 0x080;
    pub const QUEUE_DESC_HIGH: usize = 0x084;
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    pub const QUEUE_DRIVER_HIGH: usize = 0x094;
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;
    pub const CONFIG_GENERATION: usize = 0x0fc;
    pub const CONFIG: usize = 0x100;
}

/// Device status bits (§2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Why a device cannot be driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The window is smaller than the register block.
    #[error("a {0}-byte window cannot hold the virtio-mmio registers")]
    Window(usize),
    /// No virtio-mmio magic.
    #[error("no virtio-mmio device (magic {0:#x})")]
    Magic(u32),
    /// Not the modern register layout.
    #[error("virtio-mmio version {0}, not 2")]
    Version(u32),
    /// Device id 0: a placeholder window.
    #[error("the window has no device behind it")]
    NoDevice,
    /// The device does not offer VIRTIO_F_VERSION_1.
    #[error("the device is not a virtio 1.x device (features {0:#x})")]
    Legacy(u64),
    /// The device cleared FEATURES_OK.
    #[error("the device refused features {0:#x}")]
    FeaturesRefused(u64),
    /// The queue does not exist or is too small.
    #[error("queue {index} offers {max} entries, {wanted} needed")]
    QueueSize {
        /// The queue.
        index: u16,
        /// QueueNumMax.
        max: u32,
        /// The size asked for.
        wanted: u16,
    },
    /// The queue was already live, or did not go live.
    #[error("queue {0} did not change its ready state as asked")]
    QueueReady(u16),
}

/// One device's virtio-mmio window.
#[derive(Debug)]
pub struct MmioTransport {
    base: NonNull<u32>,
    size: usize,
}

impl MmioTransport {
    /// The device whose window of `size` bytes is at `base`, checked for magic, version 2 and a device.
    ///
    /// # Safety
    /// `base..base + size` must be a virtio-mmio register window, mapped (uncached) for as long as the
    /// transport lives and accessed by nothing else.
    pub unsafe fn new(base: NonNull<u8>, size: usize) -> Result<Self, TransportError> {
        if size < regs::CONFIG || !(base.as_ptr() as usize).is_multiple_of(4) {
            return Err(TransportError::Window(size));
        }
        let t = Self {
            base: base.cast(),
            size,
        };
        match t.read(regs::MAGIC) {
            MAGIC => {}
            other => return Err(TransportError::Magic(other)),
        }
        match t.read(regs::VERSION) {
            2 => {}
            other => return Err(TransportError::Version(other)),
        }
        if t.device_id() == 0 {
            return Err(TransportError::NoDevice);
        }
        Ok(t)
    }

    fn read(&self, offset: usize) -> u32 {
        // SAFETY: `offset` is one of the 4-aligned register offsets below 0x100 (`new` checked the window
        // holds them) or a 4-aligned config offset `config_u64` checked against the window size; the
        // window is mapped and ours (contract of `new`). Volatile: a device register.
        u32::from_le(unsafe { self.base.as_ptr().add(offset / 4).read_volatile() })
    }

    fn write(&self, offset: usize, value: u32) {
        // SAFETY: as for `read`.
        unsafe {
            self.base
                .as_ptr()
                .add(offset / 4)
                .write_volatile(value.to_le())
        }
    }

    /// The virtio device type (2 = block).
    pub fn device_id(&self) -> u32 {
        self.read(regs::DEVICE_ID)
    }

    /// The device status byte.
    pub fn status(&self) -> u32 {
        self.read(regs::STATUS)
    }

    fn add_status(&self, bits: u32) {
        let now = self.status();
        self.write(regs::STATUS, now | bits);
    }

    /// Resets the device: it stops using every queue and forgets the driver.
    pub fn reset(&self) {
        self.write(regs::STATUS, 0);
    }

    /// Tells the device the driver gave up on it.
    pub fn fail(&self) {
        self.add_status(status::FAILED);
    }

    /// Feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        self.write(regs::DEVICE_FEATURES_SEL, 0);
        let low = self.read(regs::DEVICE_FEATURES);
        self.write(regs::DEVICE_FEATURES_SEL, 1);
        let high = self.read(regs::DEVICE_FEATURES);
        u64::from(high) << 32 | u64::from(low)
    }

    /// Steps 1–6 of §3.1.1: reset, ACKNOWLEDGE, DRIVER, then accept the offered subset of `wanted`
    /// (VIRTIO_F_VERSION_1 is required) and check FEATURES_OK sticks. Returns the accepted features.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, TransportError> {
        self.reset();
        self.add_status(status::ACKNOWLEDGE);
        self.add_status(status::DRIVER);
        let offered = self.device_features();
        if offered & features::VERSION_1 == 0 {
            self.fail();
            return Err(TransportError::Legacy(offered));
        }
        let accepted = offered & (wanted | features::VERSION_1);
        self.write(regs::DRIVER_FEATURES_SEL, 0);
        self.write(regs::DRIVER_FEATURES, accepted as u32);
        self.write(regs::DRIVER_FEATURES_SEL, 1);
        self.write(regs::DRIVER_FEATURES, (accepted >> 32) as u32);
        self.add_status(status::FEATURES_OK);
        if self.status() & status::FEATURES_OK == 0 {
            self.fail();
            return Err(TransportError::FeaturesRefused(accepted));
        }
        Ok(accepted)
    }

    /// Entries queue `index` can have at most (0: no such queue).
    pub fn queue_max(&self, index: u16) -> u32 {
        self.write(regs::QUEUE_SEL, u32::from(index));
        self.read(regs::QUEUE_NUM_MAX)
    }

    /// Step 7: configures queue `index` with `size` entries and the rings' guest-physical addresses, then
    /// makes it ready.
    pub fn setup_queue(
        &self,
        index: u16,
        size: u16,
        desc: u64,
        driver: u64,
        device: u64,
    ) -> Result<(), TransportError> {
        let max = self.queue_max(index);
        if max < u32::from(size) || size == 0 {
            return Err(TransportError::QueueSize {
                index,
                max,
                wanted: size,
            });
        }
        if self.read(regs::QUEUE_READY) != 0 {
            return Err(TransportError::QueueReady(index));
        }
        self.write(regs::QUEUE_NUM, u32::from(size));
        for (low, high, pa) in [
            (regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH, desc),
            (regs::QUEUE_DRIVER_LOW, regs::QUEUE_DRIVER_HIGH, driver),
            (regs::QUEUE_DEVICE_LOW, regs::QUEUE_DEVICE_HIGH, device),
        ] {
            self.write(low, pa as u32);
            self.write(high, (pa >> 32) as u32);
        }
        self.write(regs::QUEUE_READY, 1);
        if self.read(regs::QUEUE_READY) != 1 {
            return Err(TransportError::QueueReady(index));
        }
        Ok(())
    }

    /// Step 8: the driver is ready; the device may process its queues.
    pub fn driver_ok(&self) {
        self.add_status(status::DRIVER_OK);
    }

    /// The available-buffer notification for queue `index`: one 32-bit write, which the host catches
    /// with an ioeventfd (no exit to user space).
    pub fn notify(&self, index: u16) {
        self.write(regs::QUEUE_NOTIFY, u32::from(index));
    }

    /// The little-endian u64 at `offset` in the device configuration space, read consistently (the
    /// generation counter unchanged across both halves); `None` beyond the window.
    pub fn config_u64(&self, offset: usize) -> Option<u64> {
        let end = regs::CONFIG.checked_add(offset)?.checked_add(8)?;
        if end > self.size || !offset.is_multiple_of(4) {
            return None;
        }
        loop {
            let generation = self.read(regs::CONFIG_GENERATION);
            let low = self.read(regs::CONFIG + offset);
            let high = self.read(regs::CONFIG + offset + 4);
            if self.read(regs::CONFIG_GENERATION) == generation {
                return Some(u64::from(high) << 32 | u64::from(low));
            }
        }
    }
}
