//! The KVM glue of viridian's host devices: what plugs `host-vsp`'s VMBus service and device models
//! into a `hypervisor-lite` partition (post-message handlers and event ports per connection id, SINT
//! delivery to a VP, port and MMIO handlers, ioeventfds and irqfds). `host-vsp` itself knows guest
//! memory and channels, never KVM.
//!
//! - [`e1000`]: the emulated e1000 NIC's register window and MSI;
//! - [`fault_port`]: the port a guest kernel reports CPU exceptions on;
//! - [`ide`]: the emulated IDE controller's ports and IRQ 14;
//! - [`msi`]: a device's interrupt as an MSI, through an irqfd or `KVM_SIGNAL_MSI`;
//! - [`virtio_blk`]: virtio-blk's MMIO window, QueueNotify ioeventfd and MSI interrupt;
//! - [`virtio_net`]: virtio-net's MMIO window, per-queue QueueNotify ioeventfds and MSI interrupt;
//! - [`vmbus`]: the VMBus service's SynIC, message connections and doorbells.

pub mod e1000;
pub mod fault_port;
pub mod ide;
pub mod msi;
pub mod virtio_blk;
pub mod virtio_net;
pub mod vmbus;
