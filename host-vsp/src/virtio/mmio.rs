//! The virtio-mmio transport registers (virtio 1.x §4.2.2, version 2 "modern" layout) every virtio device
//! here sits behind (virtio-blk with one queue, virtio-net with two), sans-I/O:
//! [`MmioTransport::read`]/[`MmioTransport::write`] take a register offset and the bytes of one guest
//! access. Owns feature negotiation (device/driver feature words with their select registers, FEATURES_OK
//! validation), the device status byte and reset, the per-queue configuration that feeds
//! `virtio_queue::Queue` (selected with QueueSel), the interrupt status/ACK pair and the device
//! configuration space with its generation counter.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

/// "virt" little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// virtio-mmio version 2 (modern).
pub const VERSION: u32 = 2;
/// Network device.
pub const DEVICE_ID_NET: u32 = 1;
/// Block device.
pub const DEVICE_ID_BLOCK: u32 = 2;
/// Our vendor id ("VIRD").
pub const VENDOR_ID: u32 = 0x4452_4956;
/// Largest queue the device accepts.
pub const QUEUE_MAX: u16 = 256;

/// Register offsets.
pub mod regs {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Feature bits (virtio 1.x §6, §5.1.3, §5.2.3).
pub mod features {
    /// virtio-net: `mac` in the configuration space is valid.
    pub const NET_MAC: u64 = 1 << 5;
    /// virtio-net: the driver can merge receive buffers (`num_buffers` > 1).
    pub const NET_MRG_RXBUF: u64 = 1 << 15;
    /// virtio-net: `status` in the configuration space is valid.
    pub const NET_STATUS: u64 = 1 << 16;
    /// Maximum number of segments per request is in `seg_max`.
    pub const BLK_SEG_MAX: u64 = 1 << 2;
    /// The disk is read-only.
    pub const BLK_RO: u64 = 1 << 5;
    /// Block size is in `blk_size`.
    pub const BLK_BLK_SIZE: u64 = 1 << 6;
    /// FLUSH is supported.
    pub const BLK_FLUSH: u64 = 1 << 9;
    /// Indirect descriptor tables.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event / avail_event notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// Virtio 1.x (modern) device.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device status bits.
pub mod device_status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// What a register write asks the device to do beyond updating registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportEvent {
    /// The driver notified this queue through the register (no ioeventfd caught it).
    Notify(u16),
    /// The driver reset the device.
    Reset,
}

/// One queue: the addresses the driver wrote for it and the device side of the queue.
#[derive(Debug)]
struct QueueSlot {
    desc: [u32; 2],
    driver: [u32; 2],
    device: [u32; 2],
    queue: Queue,
}

impl QueueSlot {
    fn new() -> Self {
        Self {
            desc: [0; 2],
            driver: [0; 2],
            device: [0; 2],
            queue: Queue::new(QUEUE_MAX).expect("QUEUE_MAX is a valid power of two"),
        }
    }

    fn reset(&mut self) {
        self.desc = [0; 2];
        self.driver = [0; 2];
        self.device = [0; 2];
        self.queue.reset();
    }
}

/// The transport state of a device. See the module documentation.
#[derive(Debug)]
pub struct MmioTransport {
    device_id: u32,
    device_features: u64,
    driver_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    status: u32,
    interrupt_status: u32,
    config: Vec<u8>,
    config_generation: u32,
    queues: Vec<QueueSlot>,
    /// Bumped whenever a queue is reset, set ready or unready: a request taken from a queue
    /// completes into it only if the generation is still the one it was taken in.
    queue_generation: u64,
}

fn le_value(data: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    let n = data.len().min(4);
    w[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(w)
}

impl MmioTransport {
    /// A reset transport of a device of type `device_id` with `queues` queues (1..), offering
    /// `device_features` with configuration space `config`.
    pub fn new(device_id: u32, queues: u16, device_features: u64, config: Vec<u8>) -> Self {
        Self {
            device_id,
            device_features,
            driver_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: 0,
            config,
            config_generation: 0,
            queues: (0..queues.max(1)).map(|_| QueueSlot::new()).collect(),
            queue_generation: 0,
        }
    }

    /// The device side of queue `index` (panics for a queue the device does not have: the device
    /// model chose the count).
    pub fn queue(&self, index: u16) -> &Queue {
        &self.queues[usize::from(index)].queue
    }

    /// See [`MmioTransport::queue`].
    pub fn queue_mut(&mut self, index: u16) -> &mut Queue {
        &mut self.queues[usize::from(index)].queue
    }

    /// Replaces `bytes` of the configuration space at `offset` (within it) and, if they changed,
    /// bumps the configuration generation and raises the configuration-change interrupt bit.
    /// Returns whether they changed (then the device should interrupt the driver).
    pub fn update_config(&mut self, offset: usize, bytes: &[u8]) -> bool {
        let Some(range) = self
            .config
            .get_mut(offset..offset.saturating_add(bytes.len()))
        else {
            return false;
        };
        if range == bytes {
            return false;
        }
        range.copy_from_slice(bytes);
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & device_status::DRIVER_OK != 0 {
            self.interrupt_status |= 2;
            return true;
        }
        false
    }

    /// Features the driver accepted (meaningful once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The queue's generation (see the field); changes on reset and on QueueReady writes.
    pub fn queue_generation(&self) -> u64 {
        self.queue_generation
    }

    /// Device status byte.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device may process its queues: DRIVER_OK, every queue ready, no
    /// NEEDS_RESET/FAILED.
    pub fn running(&self) -> bool {
        self.status & device_status::DRIVER_OK != 0
            && self.status & (device_status::NEEDS_RESET | device_status::FAILED) == 0
            && self.queues.iter().all(|q| q.queue.ready())
    }

    /// Marks the device broken (the driver violated the queue protocol); it stops processing until reset.
    pub fn set_needs_reset(&mut self) {
        self.status |= device_status::NEEDS_RESET;
        // Configuration change interrupt bit: tells the driver to look at the status.
        self.interrupt_status |= 2;
    }

    /// Records a used-buffer notification in the interrupt status register.
    pub fn raise_used_buffer(&mut self) {
        self.interrupt_status |= 1;
    }

    fn reset(&mut self) {
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt_status = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_generation = self.queue_generation.wrapping_add(1);
    }

    /// A guest read of `data.len()` bytes at `offset` into the window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            let start = (offset - regs::CONFIG) as usize;
            for (i, b) in data.iter_mut().enumerate() {
                *b = start
                    .checked_add(i)
                    .and_then(|at| self.config.get(at))
                    .copied()
                    .unwrap_or(0);
            }
            return;
        }
        let selected = self.queues.get(self.queue_sel as usize);
        let value = match offset {
            regs::MAGIC => MAGIC,
            regs::VERSION => VERSION,
            regs::DEVICE_ID => self.device_id,
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX if selected.is_some() => u32::from(QUEUE_MAX),
            regs::QUEUE_READY => selected.map_or(0, |q| u32::from(q.queue.ready())),
            regs::INTERRUPT_STATUS => self.interrupt_status,
            regs::STATUS => self.status,
            regs::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    /// A guest write of `data` at `offset`; `mem` validates queue addresses when the queue goes ready.
    pub fn write<M: GuestMemory>(
        &mut self,
        mem: Option<&M>,
        offset: u64,
        data: &[u8],
    ) -> Option<TransportEvent> {
        let value = le_value(data);
        let sel = self.queue_sel as usize;
        // Queue configuration may only change while the queue is not ready.
        let configurable = self.queues.get(sel).is_some_and(|q| !q.queue.ready());
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            regs::DRIVER_FEATURES if self.status & device_status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xFFFF_FFFF) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xFFFF_FFFF) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            regs::QUEUE_SEL => self.queue_sel = value,
            regs::QUEUE_NUM if configurable => self.queues[sel].queue.set_size(value as u16),
            regs::QUEUE_DESC_LOW if configurable => self.queues[sel].desc[0] = value,
            regs::QUEUE_DESC_HIGH if configurable => self.queues[sel].desc[1] = value,
            regs::QUEUE_DRIVER_LOW if configurable => self.queues[sel].driver[0] = value,
            regs::QUEUE_DRIVER_HIGH if configurable => self.queues[sel].driver[1] = value,
            regs::QUEUE_DEVICE_LOW if configurable => self.queues[sel].device[0] = value,
            regs::QUEUE_DEVICE_HIGH if configurable => self.queues[sel].device[1] = value,
            regs::QUEUE_READY if sel < self.queues.len() => {
                let ready = self.queues[sel].queue.ready();
                if value == 1 && !ready {
                    self.activate_queue(sel, mem);
                    self.queue_generation = self.queue_generation.wrapping_add(1);
                } else if value == 0 {
                    self.queues[sel].queue.set_ready(false);
                    self.queue_generation = self.queue_generation.wrapping_add(1);
                }
            }
            regs::QUEUE_NOTIFY if (value as usize) < self.queues.len() => {
                return Some(TransportEvent::Notify(value as u16))
            }
            regs::INTERRUPT_ACK => self.interrupt_status &= !value,
            regs::STATUS => return self.write_status(value),
            _ => {}
        }
        None
    }

    fn activate_queue<M: GuestMemory>(&mut self, index: usize, mem: Option<&M>) {
        let slot = &mut self.queues[index];
        let q = &mut slot.queue;
        q.set_desc_table_address(Some(slot.desc[0]), Some(slot.desc[1]));
        q.set_avail_ring_address(Some(slot.driver[0]), Some(slot.driver[1]));
        q.set_used_ring_address(Some(slot.device[0]), Some(slot.device[1]));
        q.set_event_idx(self.driver_features & features::RING_EVENT_IDX != 0);
        q.set_ready(true);
        // Rings outside guest RAM or misaligned: the queue stays unusable.
        if !mem.is_some_and(|m| q.is_valid(m)) {
            q.set_ready(false);
        }
    }

    fn write_status(&mut self, value: u32) -> Option<TransportEvent> {
        if value == 0 {
            self.reset();
            return Some(TransportEvent::Reset);
        }
        let mut value = value & 0xFF;
        if value & device_status::FEATURES_OK != 0 && self.status & device_status::FEATURES_OK == 0
        {
            let ok = self.driver_features & !self.device_features == 0
                && self.driver_features & features::VERSION_1 != 0;
            if !ok {
                value &= !device_status::FEATURES_OK;
            }
        }
        // The driver may only set bits; NEEDS_RESET stays until reset.
        self.status |= value;
        None
    }
}
