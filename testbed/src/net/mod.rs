//! The network rows: the same traffic through each NIC, counted per packet.
//!
//! For each [`NetKit`], [`run_nic`] makes a network namespace of the run's own (198.18.0.0/15
//! only, removed afterwards) with a TAP whose Linux side is 198.18.0.1/24, starts the host's
//! servers there ([`peer`]), attaches the NIC's host side to the TAP and boots the guest with
//! `net:dev=<nic>,<steps>`: a 64-byte UDP flood one way, a TCP stream each way and UDP
//! request/response ([`NetPlan::workloads`]). Each step's row pairs the guest's `net-step` line
//! (TSC cycles; frames the NIC sent and received; notifications it sent the device) with the
//! partition's counters and the host CPU over the step's marks (1000 + 2k, 1001 + 2k). Every TCP
//! row's bytes are checked at both ends (the pattern and its hash); a row whose data is wrong or
//! whose guest failed is FAILED, never numbers. The loopback floor ([`LoopbackKit`]) runs the same
//! steps inside the guest against in-guest servers: no NIC, no namespace.

pub mod peer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use guest_abi::net::DATAGRAM;
use host_kvm::e1000::{E1000Placement, KvmE1000};
use host_kvm::virtio_net::{KvmVirtioNet, VirtioNetPlacement};
use host_vsp::emulated::e1000::E1000Device;
use host_vsp::net::netns::Netns;
use host_vsp::net::TapNet;
use host_vsp::synthetic::netvsp::{NetvspConfig, NetvspDevice};
use host_vsp::virtio::net::{VirtioNetConfig, VirtioNetDevice};
use vmbus::protocol::Guid;

use crate::report::{Kind, Measurement, Row};
use crate::{GuestRun, GuestVm, GuestVmConfig};
use peer::{pattern_hash, HostPeer, PeerReport};

/// The TAP each run makes in its namespace.
pub const TAP: &str = "vtb0";
/// The guest NIC's MAC address (Hyper-V's OUI, locally unique).
pub const GUEST_MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0x18, 0x00, 0x02];
const NETVSC_INSTANCE: Guid = Guid::new(0x5649_5249, 0x4449, 0x414e, *b"TBNETV0\0");
/// Longest a guest's whole network run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// One NIC as the network rows drive it.
pub trait NetKit {
    /// Name in the report.
    fn name(&self) -> &str;
    /// The guest's `net:dev=` name.
    fn guest_dev(&self) -> &str;
    /// The in-guest loopback floor rather than a NIC (no TAP, no namespace).
    fn baseline(&self) -> bool {
        false
    }
    /// Attach the NIC's host side, on `tap`, to the guest about to boot.
    fn configure(&self, config: &mut GuestVmConfig, tap: TapNet) -> Result<()>;
}

/// The synthetic NIC: netvsp on the VMBus.
#[derive(Debug, Default)]
pub struct NetvscKit;

impl NetKit for NetvscKit {
    fn name(&self) -> &str {
        "netvsc"
    }
    fn guest_dev(&self) -> &str {
        "netvsc"
    }
    fn configure(&self, config: &mut GuestVmConfig, tap: TapNet) -> Result<()> {
        let nic = NetvspDevice::new(NETVSC_INSTANCE, Box::new(tap), NetvspConfig::new(GUEST_MAC))
            .context("netvsp device")?;
        config.vmbus_device(Arc::new(nic));
        Ok(())
    }
}

/// virtio-net over virtio-mmio (ioeventfd kicks, irqfd interrupts, EVENT_IDX), the guest's driver
/// held to Linux's virtio_net discipline.
#[derive(Debug, Default)]
pub struct VirtioNetKit;

impl NetKit for VirtioNetKit {
    fn name(&self) -> &str {
        "virtio-net"
    }
    fn guest_dev(&self) -> &str {
        "virtio-net"
    }
    fn configure(&self, config: &mut GuestVmConfig, tap: TapNet) -> Result<()> {
        let device = VirtioNetDevice::new(Box::new(tap), VirtioNetConfig::new(GUEST_MAC))
            .context("virtio-net device")?;
        let placement = VirtioNetPlacement {
            base: guest_abi::VIRTIO_NET_MMIO_GPA,
            vector: guest_abi::VIRTIO_NET_VECTOR,
            ..VirtioNetPlacement::default()
        };
        let kvm = KvmVirtioNet::new(Arc::new(device), placement);
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

/// The emulated Intel e1000 (82540EM): every register access the guest makes is an exit; its
/// driver keeps Linux e1000's discipline (one tail write per batch, interrupts masked while
/// draining, ITR).
#[derive(Debug, Default)]
pub struct E1000Kit;

impl NetKit for E1000Kit {
    fn name(&self) -> &str {
        "e1000"
    }
    fn guest_dev(&self) -> &str {
        "e1000"
    }
    fn configure(&self, config: &mut GuestVmConfig, tap: TapNet) -> Result<()> {
        let nic = Arc::new(E1000Device::new(GUEST_MAC, Box::new(tap)).context("e1000 device")?);
        let kvm = KvmE1000::new(
            nic,
            E1000Placement {
                base: guest_abi::E1000_MMIO_GPA,
                vector: guest_abi::E1000_VECTOR,
                apic_id: 0,
            },
        );
        let placed = kvm.clone();
        config.configure(move |pc| {
            placed.register(pc);
            Ok(())
        });
        config.attach(move |partition, _| Ok(kvm.attach(partition)?));
        Ok(())
    }
}

/// The in-guest loopback floor.
#[derive(Debug, Default)]
pub struct LoopbackKit;

impl NetKit for LoopbackKit {
    fn name(&self) -> &str {
        "loopback"
    }
    fn guest_dev(&self) -> &str {
        "loopback"
    }
    fn baseline(&self) -> bool {
        true
    }
    fn configure(&self, _: &mut GuestVmConfig, _: TapNet) -> Result<()> {
        bail!("the loopback floor has no host side")
    }
}

/// Every NIC, in report order (the floor first, as block's ramdisk).
pub fn kits() -> Vec<Box<dyn NetKit>> {
    vec![
        Box::new(LoopbackKit),
        Box::new(E1000Kit),
        Box::new(VirtioNetKit),
        Box::new(NetvscKit),
    ]
}

/// How much traffic each workload moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetPlan {
    /// 64-byte datagrams of the flood.
    pub flood: u64,
    /// MiB of each TCP stream.
    pub stream_mib: u64,
    /// UDP request/response round trips.
    pub round_trips: u64,
}

impl Default for NetPlan {
    fn default() -> Self {
        Self {
            flood: 20_000,
            stream_mib: 32,
            round_trips: 2_000,
        }
    }
}

/// One network workload: its row name and the guest's step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetWorkload {
    /// Name in the report (stream workloads' names contain `stream`).
    pub name: &'static str,
    /// The guest's `net` step.
    pub step: String,
}

impl NetPlan {
    /// The workloads, in the order the guest runs them.
    pub fn workloads(&self) -> Vec<NetWorkload> {
        vec![
            NetWorkload {
                name: "udp64-flood",
                step: format!("udp-flood={}", self.flood),
            },
            NetWorkload {
                name: "tcp-stream-tx",
                step: format!("tcp-send={}", self.stream_mib),
            },
            NetWorkload {
                name: "tcp-stream-rx",
                step: format!("tcp-recv={}", self.stream_mib),
            },
            NetWorkload {
                name: "udp-rr",
                step: format!("udp={}", self.round_trips),
            },
        ]
    }

    fn stream_bytes(&self) -> u64 {
        self.stream_mib << 20
    }
}

/// What a network run needs besides the kit.
#[derive(Debug, Clone, Copy)]
pub struct NetOptions {
    /// TSC rate (guest cycles → seconds).
    pub tsc_hz: u64,
    /// Echo the guest console to stderr.
    pub echo: bool,
    /// The traffic.
    pub plan: NetPlan,
}

/// Whether this machine can make the namespace the NIC rows need (`Err`: why not).
pub fn probe_namespace() -> Result<()> {
    Netns::create(&format!("viridian-tb-{}-probe", std::process::id()))
        .map(drop)
        .context("cannot make a network namespace")
}

/// Runs every workload on `kit` (see the module docs). Never fails: failures become FAILED rows.
pub fn run_nic(kit: &dyn NetKit, opts: &NetOptions) -> Vec<Row> {
    let workloads = opts.plan.workloads();
    let row = |w: &NetWorkload, outcome| Row {
        kind: Kind::Net,
        device: kit.name().to_string(),
        baseline: kit.baseline(),
        workload: w.name.to_string(),
        spec: format!("{}:{}", w.name, w.step),
        vcpus: 1,
        channels: 1,
        outcome,
    };
    match run_guest(kit, opts, &workloads) {
        Ok((run, peer)) => workloads
            .iter()
            .enumerate()
            .map(|(k, w)| row(w, measure(&run, peer.as_ref(), opts, k, w)))
            .collect(),
        Err(e) => {
            let why = format!("{e:#}");
            workloads.iter().map(|w| row(w, Err(why.clone()))).collect()
        }
    }
}

/// Boots the guest on the kit's NIC (in a namespace of its own, with the host's servers) and
/// waits for it.
fn run_guest(
    kit: &dyn NetKit,
    opts: &NetOptions,
    workloads: &[NetWorkload],
) -> Result<(GuestRun, Option<PeerReport>)> {
    let steps: Vec<&str> = workloads.iter().map(|w| w.step.as_str()).collect();
    let mut config = GuestVmConfig::new(format!(
        "bench-tsc:{} net:dev={},{}",
        opts.tsc_hz,
        kit.guest_dev(),
        steps.join(",")
    ));
    config.echo = opts.echo;
    if kit.baseline() {
        let run = GuestVm::new(config)?.run(RUN_TIMEOUT)?;
        run.expect_success()?;
        return Ok((run, None));
    }
    let ns = Netns::create(&format!(
        "viridian-tb-{}-{}",
        std::process::id(),
        kit.name()
    ))?;
    let tap = ns.run(|| TapNet::create(TAP)).context("create the TAP")?;
    ns.try_ip(&["addr", "add", "198.18.0.1/24", "dev", TAP])?;
    ns.try_ip(&["link", "set", "dev", TAP, "up"])?;
    let peer = HostPeer::start(&ns, opts.plan.stream_bytes())?;
    kit.configure(&mut config, tap)?;
    let run = GuestVm::new(config).and_then(|vm| vm.run(RUN_TIMEOUT));
    let report = peer.finish();
    let run = run?;
    run.expect_success()?;
    Ok((run, Some(report?)))
}

/// The `key=value` fields of the guest's `net-step=k` line.
fn step_line(run: &GuestRun, k: usize) -> Option<HashMap<&str, u64>> {
    let head = format!("net-step={k} ");
    let line = run.console.lines().find(|l| l.starts_with(&head))?;
    Some(
        line.split_whitespace()
            .filter_map(|f| f.split_once('='))
            .filter_map(|(key, v)| Some((key, v.parse().ok()?)))
            .collect(),
    )
}

/// The row of step `k` (`w`), or why its data is wrong.
fn measure(
    run: &GuestRun,
    peer: Option<&PeerReport>,
    opts: &NetOptions,
    k: usize,
    w: &NetWorkload,
) -> Result<Measurement, String> {
    let plan = &opts.plan;
    let number = |key: &str| -> Result<u64, String> {
        run.console_value(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("the guest printed no `{key}`"))
    };
    let (bytes, latency) = match w.name {
        "udp64-flood" => {
            let sent = number("net-udp-flood-sent")?;
            let delivered = match peer {
                Some(p) => p.flood_received,
                None => number("net-peer-udp-sink")?,
            };
            if sent != plan.flood || delivered > sent {
                return Err(format!("flood: {sent} sent, {delivered} counted"));
            }
            tracing::info!(sent, delivered, "udp flood");
            (sent * DATAGRAM as u64, None)
        }
        "tcp-stream-tx" => {
            let sent = number("net-tcp-sent")?;
            let guest_hash = run.console_value("net-tcp-sent-hash").unwrap_or("");
            let (got, hash) = match peer {
                Some(p) => (p.sink_bytes, format!("{:016x}", p.sink_hash)),
                None => (
                    number("net-peer-tcp-sink")?,
                    run.console_value("net-peer-tcp-sink-hash")
                        .unwrap_or("")
                        .to_string(),
                ),
            };
            if sent != plan.stream_bytes() || got != sent || hash != guest_hash {
                return Err(format!(
                    "tcp to the host: the guest sent {sent} bytes (hash {guest_hash}), the host \
                     checked {got} (hash {hash})"
                ));
            }
            (sent, None)
        }
        "tcp-stream-rx" => {
            let got = number("net-tcp-received")?;
            let hash = run.console_value("net-tcp-received-hash").unwrap_or("");
            let want = format!("{:016x}", pattern_hash(plan.stream_bytes()));
            let sent = peer.map_or(plan.stream_bytes(), |p| p.source_bytes);
            if got != plan.stream_bytes() || sent != got || hash != want {
                return Err(format!(
                    "tcp from the host: {sent} sent, the guest checked {got} bytes (hash {hash}, \
                     want {want})"
                ));
            }
            (got, None)
        }
        "udp-rr" => {
            let n = number("net-udp-roundtrips")?;
            if n != plan.round_trips {
                return Err(format!("{n} UDP round trips of {}", plan.round_trips));
            }
            let us = |key: &str| number(key).map(|ns| ns as f64 / 1e3);
            (
                2 * n * DATAGRAM as u64,
                Some((us("net-udp-p50-ns")?, us("net-udp-p99-ns")?)),
            )
        }
        other => return Err(format!("no check for workload `{other}`")),
    };
    let step = step_line(run, k).ok_or_else(|| format!("no `net-step={k}` line"))?;
    let field = |key: &str| step.get(key).copied().unwrap_or(0);
    let packets = field("tx") + field("rx");
    let (start, end) = (1000 + 2 * k as u32, 1001 + 2 * k as u32);
    let window = run
        .window(start, end)
        .ok_or_else(|| format!("no marks {start}/{end}"))?;
    let cpu = run
        .cpu_window(start, end)
        .ok_or("the step's marks came from different threads")?
        .us_per_io(packets);
    let (lat_p50_us, lat_p99_us) = latency.unwrap_or((f64::NAN, f64::NAN));
    Ok(Measurement {
        ios: packets,
        bytes,
        seconds: field("cycles") as f64 / opts.tsc_hz.max(1) as f64,
        lat_p50_us,
        lat_p99_us,
        lat_max_us: f64::NAN,
        user_exits: window.user_exits(),
        vm_exits: window.kvm_exits(),
        interrupts: window.vcpu_sum("irq_injections"),
        guest_signals: field("signals"),
        guest_interrupts: 0,
        achieved_qd: 0,
        host_cpu_us_per_io: cpu.host,
        vcpu_cpu_us_per_io: cpu.vcpu,
        device_cpu_us_per_io: cpu.device,
    })
}
