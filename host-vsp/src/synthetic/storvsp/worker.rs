//! [`StorvspWorker`]: one storvsc channel served end to end, minus the signalling plumbing.
//!
//! The worker owns the channel's guest→host ring ([`RingConsumer`]) and host→guest ring
//! ([`RingProducer`]), the guest memory and the LUNs. [`StorvspWorker::poll`] drains the inbound ring in
//! batches with interrupts masked (unmasking and re-checking at the end), answers control requests
//! through the [`Handshake`], executes SRBs — inline, or on a small thread pool where requests run
//! concurrently and complete out of order, matched by transaction id — and writes completions. When
//! the guest's ring is full, completions stay queued (the producer sets `pending_send_sz`, so the
//! guest signals once it has made room) and are retried on the next poll; the number of requests in
//! flight is bounded by `queue_depth`, beyond which the worker leaves packets in the ring
//! (back-pressure) instead of buffering without bound. What the caller must do is returned in
//! [`PollResult`]: signal the guest, poll again, or wait.
//!
//! The data path allocates nothing once warm: segment lists travel with their request and come back
//! with its completion for reuse, every executor owns its [`ExecStorage`] (iovecs for transfers
//! straight between the backend and guest pages), and the pool's queues are bounded channels sized
//! to the queue depth.

use std::collections::VecDeque;
use std::sync::mpsc::{RecvTimeoutError, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use storvsp_protocol::{
    sense_buffer_size, vstor_packet_size, NtStatus, Operation, ProtocolVersion, SrbStatus,
    VstorPacket,
};
use vmbus::mem::RingMemory;
use vmbus::ring::{RingConsumer, RingError, RingProducer};

use super::executor::{Done, Job, Pool, Shared};
use super::handshake::Handshake;
use super::request::{decode, Inbound, Segment};
use super::scsi::{ExecStorage, ScsiController};
use super::{LunMap, StorvspConfig};
use crate::guest_memory::GuestMemoryMmap;

/// How long a device in poll mode keeps polling without progress before it re-arms the guest's
/// signals and sleeps.
pub const POLL_MODE_IDLE_BUDGET: Duration = Duration::from_millis(2);
/// Batches one [`StorvspWorker::poll`] takes at most before returning (fairness towards the caller).
const MAX_BATCHES_PER_POLL: usize = 16;

/// Counters of a worker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StorvspStats {
    /// Packets taken from the inbound ring.
    pub packets: u64,
    /// SRBs executed.
    pub requests: u64,
    /// Control requests answered (handshake, resets, unsupported operations).
    pub control: u64,
    /// SRBs that did not end GOOD.
    pub failed_requests: u64,
    /// Data bytes transferred by SRBs.
    pub bytes: u64,
    /// Completions written.
    pub completions: u64,
    /// Polls after which the guest had to be signalled.
    pub signals: u64,
    /// Completion writes that found the guest's ring full (completions kept pending).
    pub full_ring_stalls: u64,
    /// Times the worker left packets in the ring because `queue_depth` requests were in flight.
    pub backpressure: u64,
    /// Malformed requests completed with an error status.
    pub malformed: u64,
    /// Packets dropped (not requests: completions or unknown packet types).
    pub dropped: u64,
    /// Poll-mode iterations spent waiting for outstanding I/O.
    pub poll_spins: u64,
    /// Most requests executing at once.
    pub max_in_flight: u64,
    /// Requests whose execution panicked (each completed as a failed I/O).
    pub io_panics: u64,
}

/// What the caller must do after [`StorvspWorker::poll`].
#[must_use = "the guest may need a signal"]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollResult {
    /// Interrupt the guest: a completion landed in an empty, unmasked ring, or reading freed ring
    /// space a blocked guest asked for (`pending_send_sz`).
    pub signal_guest: bool,
    /// Packets taken from the guest in this poll.
    pub received: usize,
    /// Completions written in this poll.
    pub completed: usize,
    /// Requests still executing (thread pool); their completions arrive later.
    pub in_flight: usize,
    /// Completions waiting for room in the guest's ring.
    pub pending_completions: usize,
    /// Packets are still waiting in the inbound ring (back-pressure or the batch limit): poll again
    /// once completions drained, without waiting for a signal.
    pub more: bool,
    /// A ring failed after a protocol violation by the guest: the channel is dead.
    pub failed: bool,
}

/// The host end of one storvsc channel.
pub struct StorvspWorker<M: RingMemory> {
    inbound: RingConsumer<M>,
    outbound: RingProducer<M>,
    shared: Arc<Shared>,
    handshake: Handshake,
    pool: Option<Pool>,
    pending: VecDeque<Done>,
    /// Poll mode left the guest's signals suppressed.
    masked_for_polling: bool,
    in_flight: usize,
    config: StorvspConfig,
    stats: StorvspStats,
    packet_buf: Vec<u8>,
    /// Segment list the next packet is decoded into.
    segments: Vec<Segment>,
    /// Segment lists of completed requests, for reuse.
    spare_segments: Vec<Vec<Segment>>,
    storage: ExecStorage,
    failed: bool,
}

impl<M: RingMemory> std::fmt::Debug for StorvspWorker<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorvspWorker")
            .field("handshake", &self.handshake.state())
            .field("in_flight", &self.in_flight)
            .field("pending", &self.pending.len())
            .field("stats", &self.stats)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<M: RingMemory> StorvspWorker<M> {
    /// A worker on the channel's guest→host ring (`inbound`) and host→guest ring (`outbound`),
    /// reading and writing data buffers in `memory`, serving `luns`.
    ///
    /// # Errors
    /// If `config.io_threads > 0` and the threads cannot be spawned.
    pub fn new(
        inbound: RingConsumer<M>,
        outbound: RingProducer<M>,
        memory: GuestMemoryMmap,
        luns: LunMap,
        config: StorvspConfig,
    ) -> std::io::Result<Self> {
        let max_transfer = config.effective_max_transfer();
        let shared = Arc::new(Shared {
            controller: ScsiController::new(luns, max_transfer),
            memory,
            notifier: Mutex::new(None),
        });
        let queue_depth = config.queue_depth.max(1);
        let pool = match config.io_threads {
            0 => None,
            n => Some(Pool::start(&shared, n, queue_depth)?),
        };
        let packet_buf = vec![0u8; inbound.data_size()];
        Ok(Self {
            inbound,
            outbound,
            handshake: Handshake::new(config.versions.clone(), max_transfer)
                .with_sub_channels(config.effective_max_sub_channels()),
            shared,
            pool,
            pending: VecDeque::with_capacity(queue_depth),
            in_flight: 0,
            segments: Vec::new(),
            spare_segments: Vec::with_capacity(queue_depth),
            storage: ExecStorage::new(max_transfer),
            config: StorvspConfig {
                queue_depth,
                batch: config.batch.max(1),
                ..config
            },
            stats: StorvspStats::default(),
            packet_buf,
            failed: false,
            masked_for_polling: false,
        })
    }

    /// A worker for a sub-channel of a controller whose primary channel agreed `version` (`None`: not
    /// yet): it takes SRBs from the start and no handshake ([`Handshake::for_sub_channel`]).
    ///
    /// # Errors
    /// As [`StorvspWorker::new`].
    pub fn for_sub_channel(
        inbound: RingConsumer<M>,
        outbound: RingProducer<M>,
        memory: GuestMemoryMmap,
        luns: LunMap,
        config: StorvspConfig,
        version: Option<ProtocolVersion>,
    ) -> std::io::Result<Self> {
        let mut worker = Self::new(inbound, outbound, memory, luns, config)?;
        worker.handshake = Handshake::for_sub_channel(
            worker.config.versions.clone(),
            worker.config.effective_max_transfer(),
            version,
        );
        Ok(worker)
    }

    /// The sub-channel count of a CREATE_SUB_CHANNELS the guest made (and was told succeeded), once:
    /// the device offers that many sub-channels.
    pub fn take_sub_channel_request(&mut self) -> Option<u16> {
        self.handshake.take_sub_channel_request()
    }

    /// Counters so far.
    pub fn stats(&self) -> StorvspStats {
        self.stats
    }

    /// The handshake (its state and the agreed version).
    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// Requests executing on the pool.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Completions waiting for ring space.
    pub fn pending_completions(&self) -> usize {
        self.pending.len()
    }

    /// Whether a ring failed (the guest violated the ring protocol).
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Switches poll mode: while on, [`poll`](Self::poll) leaves the guest's signals suppressed (the
    /// inbound ring's interrupt_mask set), so a caller that keeps polling gets no signals at all;
    /// switching it off re-arms them.
    pub fn set_poll_mode(&mut self, on: bool) {
        self.config.poll_mode = on;
        if !on {
            let _ = self.rearm();
        }
    }

    /// Whether poll mode is on.
    pub fn poll_mode(&self) -> bool {
        self.config.poll_mode
    }

    /// Let the guest signal again (clear interrupt_mask) after polling; returns whether packets
    /// arrived meanwhile (poll again before sleeping).
    pub fn rearm(&mut self) -> bool {
        if !std::mem::take(&mut self.masked_for_polling) {
            return false;
        }
        match self.inbound.unmask_interrupts() {
            Ok(more) => more,
            Err(e) => {
                self.fail("inbound", e);
                false
            }
        }
    }

    /// Called (from an executor thread) whenever a pooled request completes, e.g. to wake the thread
    /// that calls [`poll`](Self::poll).
    pub fn set_completion_notifier(&self, notifier: Arc<dyn Fn() + Send + Sync>) {
        *self
            .shared
            .notifier
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(notifier);
    }

    /// Blocks until a pooled request completes or `timeout` passes; returns whether one did (it is
    /// written by the next [`poll`](Self::poll)). Returns `false` at once when nothing is in flight.
    pub fn wait_for_completion(&mut self, timeout: Duration) -> bool {
        if self.in_flight == 0 {
            return false;
        }
        let Some(pool) = &self.pool else { return false };
        match pool.done.recv_timeout(timeout) {
            Ok(done) => {
                self.in_flight -= 1;
                self.complete(done);
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                self.lose_pool();
                false
            }
        }
    }

    /// Every pool thread is gone (which contained panics never cause): the requests they held cannot
    /// complete, so stop waiting for them — a caller that waited would otherwise return at once, over
    /// and over — and run later requests inline.
    fn lose_pool(&mut self) {
        crate::guest_error!(
            lost = self.in_flight,
            "storvsp: the I/O pool is gone; its requests are lost, later ones run inline"
        );
        self.in_flight = 0;
        self.pool = None;
    }

    /// The rings (for diagnostics and tests).
    pub fn rings(&self) -> (&RingConsumer<M>, &RingProducer<M>) {
        (&self.inbound, &self.outbound)
    }

    /// Serves the channel: collects finished requests, writes completions, drains and dispatches new
    /// requests (in poll mode, keeps at it while I/O is outstanding) and says what the caller must do.
    pub fn poll(&mut self) -> PollResult {
        let mut r = PollResult::default();
        let mut batches = 0;
        while !self.failed {
            self.collect();
            self.flush(&mut r);
            let took = self.drain(&mut r);
            self.collect();
            self.flush(&mut r);
            batches += 1;
            if batches >= MAX_BATCHES_PER_POLL {
                r.more |= took > 0;
                break;
            }
            if r.more && self.has_capacity() {
                continue;
            }
            break;
        }
        if r.more && !self.has_capacity() {
            self.stats.backpressure += 1;
        }
        r.in_flight = self.in_flight;
        r.pending_completions = self.pending.len();
        r.failed = self.failed;
        self.stats.signals += u64::from(r.signal_guest);
        r
    }

    fn has_capacity(&self) -> bool {
        self.in_flight + self.pending.len() < self.config.queue_depth
    }

    fn fail(&mut self, what: &str, error: RingError) {
        crate::guest_warn!(%error, what, "storvsp: ring failed; channel stopped");
        self.failed = true;
    }

    /// Accounts an executed request, keeps its segment list for reuse and queues its completion.
    fn complete(&mut self, mut done: Done) {
        self.stats.bytes += done.bytes;
        self.stats.failed_requests += u64::from(!done.good);
        self.stats.io_panics += u64::from(done.panicked);
        let mut segments = std::mem::take(&mut done.segments);
        if segments.capacity() > 0 && self.spare_segments.len() < self.config.queue_depth {
            segments.clear();
            self.spare_segments.push(segments);
        }
        self.pending.push_back(done);
    }

    /// Moves finished pooled requests to the completion queue.
    fn collect(&mut self) {
        while let Some(pool) = &self.pool {
            match pool.done.try_recv() {
                Ok(done) => {
                    self.in_flight -= 1;
                    self.complete(done);
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => return self.lose_pool(),
            }
        }
    }

    /// Writes queued completions until the guest's ring is full.
    fn flush(&mut self, r: &mut PollResult) {
        while let Some(done) = self.pending.front() {
            match self
                .outbound
                .write_completion(done.trans_id, &[done.packet.as_wire()])
            {
                Ok(written) => {
                    r.signal_guest |= written.signal;
                    r.completed += 1;
                    self.stats.completions += 1;
                    self.pending.pop_front();
                }
                Err(RingError::Full { .. }) => {
                    self.stats.full_ring_stalls += 1;
                    return;
                }
                Err(e) => return self.fail("outbound", e),
            }
        }
    }

    /// Takes up to one batch of packets (bounded by the free queue depth) with interrupts masked.
    fn drain(&mut self, r: &mut PollResult) -> usize {
        let room = self
            .config
            .queue_depth
            .saturating_sub(self.in_flight + self.pending.len())
            .min(self.config.batch);
        if room == 0 {
            r.more = match self.inbound.available() {
                Ok(n) => n > 0,
                Err(e) => {
                    self.fail("inbound", e);
                    false
                }
            };
            return 0;
        }
        self.inbound.mask_interrupts();
        let mut buf = std::mem::take(&mut self.packet_buf);
        let mut took = 0;
        while took < room {
            match self.inbound.read_packet_deferred(&mut buf) {
                Ok(Some(info)) => {
                    took += 1;
                    self.handle_packet(&buf[..info.len]);
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail("inbound", e);
                    break;
                }
            }
        }
        self.packet_buf = buf;
        self.stats.packets += took as u64;
        r.received += took;
        if self.failed {
            return took;
        }
        match self.inbound.commit() {
            Ok(signal) => r.signal_guest |= signal,
            Err(e) => {
                self.fail("inbound", e);
                return took;
            }
        }
        // Poll mode keeps the guest's signals suppressed (interrupt_mask stays set) until the caller
        // re-arms ([`StorvspWorker::rearm`]); the guest's packets are seen by the next pass.
        if self.config.poll_mode {
            self.masked_for_polling = true;
            r.more = took == room;
            return took;
        }
        match self.inbound.unmask_interrupts() {
            Ok(more) => r.more = more,
            Err(e) => self.fail("inbound", e),
        }
        took
    }

    /// Decodes and dispatches one packet.
    fn handle_packet(&mut self, bytes: &[u8]) {
        let max_transfer = self.shared.controller.max_transfer();
        match decode(bytes, &self.shared.memory, max_transfer, &mut self.segments) {
            Inbound::Ignored { packet_type } => {
                tracing::debug!(
                    ?packet_type,
                    "storvsp: dropping a packet that is not a request"
                );
                self.stats.dropped += 1;
            }
            Inbound::Malformed {
                trans_id,
                packet,
                error,
            } => {
                tracing::debug!(trans_id, ?error, "storvsp: malformed request");
                self.stats.malformed += 1;
                self.complete_with_error(trans_id, packet, NtStatus::INVALID_PARAMETER);
            }
            Inbound::Request(request) => {
                if request.packet.operation() != Operation::EXECUTE_SRB {
                    self.stats.control += 1;
                    let reply = self.handshake.handle(&request.packet);
                    self.push(Done {
                        trans_id: request.trans_id,
                        packet: reply,
                        bytes: 0,
                        good: true,
                        panicked: false,
                        segments: Vec::new(),
                    });
                    return;
                }
                let Some(version) = self.handshake.ready_version() else {
                    tracing::debug!(trans_id = request.trans_id, "storvsp: SRB before END_INIT");
                    self.stats.malformed += 1;
                    return self.complete_with_error(
                        request.trans_id,
                        Some(request.packet),
                        NtStatus::INVALID_DEVICE_STATE,
                    );
                };
                if request.packet_len < vstor_packet_size(version) {
                    tracing::debug!(len = request.packet_len, "storvsp: short SRB packet");
                    self.stats.malformed += 1;
                    return self.complete_with_error(
                        request.trans_id,
                        Some(request.packet),
                        NtStatus::INVALID_PARAMETER,
                    );
                }
                self.stats.requests += 1;
                let next = self.spare_segments.pop().unwrap_or_default();
                let segments = std::mem::replace(&mut self.segments, next);
                self.dispatch(Job {
                    trans_id: request.trans_id,
                    packet: request.packet,
                    segments,
                    data_len: request.data_len,
                    sense_len: sense_buffer_size(version),
                });
            }
        }
    }

    fn dispatch(&mut self, job: Job) {
        if let Some(pool) = &self.pool {
            if let Some(jobs) = &pool.jobs {
                // Never full: at most `queue_depth` requests are in flight.
                match jobs.try_send(job) {
                    Ok(()) => {
                        self.in_flight += 1;
                        self.stats.max_in_flight =
                            self.stats.max_in_flight.max(self.in_flight as u64);
                        return;
                    }
                    // The pool is gone or unexpectedly full: run it here instead.
                    Err(TrySendError::Disconnected(job) | TrySendError::Full(job)) => {
                        return self.run_inline(job)
                    }
                }
            }
        }
        self.run_inline(job);
    }

    fn run_inline(&mut self, job: Job) {
        let done = self.shared.execute_contained(job, &mut self.storage);
        self.complete(done);
    }

    fn push(&mut self, done: Done) {
        self.pending.push_back(done);
    }

    /// Completes a request that cannot run: the guest's packet echoed (if decodable) with `status`
    /// and, for an SRB, `SRB_STATUS_INVALID_REQUEST` and no data.
    fn complete_with_error(
        &mut self,
        trans_id: u64,
        packet: Option<VstorPacket>,
        status: NtStatus,
    ) {
        let mut reply = packet.unwrap_or_else(|| VstorPacket::new(Operation::COMPLETE_IO, 0));
        if reply.operation() == Operation::EXECUTE_SRB {
            let mut srb = reply.srb();
            srb.srb_status = SrbStatus::INVALID_REQUEST.0;
            srb.scsi_status = 0;
            srb.sense_info_length = 0;
            srb.data_transfer_length.set(0);
            reply.set_srb(&srb);
        }
        reply.operation.set(Operation::COMPLETE_IO.0);
        reply.set_status(status);
        self.stats.failed_requests += 1;
        self.push(Done {
            trans_id,
            packet: reply,
            bytes: 0,
            good: false,
            panicked: false,
            segments: Vec::new(),
        });
    }
}

/// The protocol version a worker would agree with a guest proposing `proposals` in order (for
/// callers that pick a configuration; the worker itself negotiates on the wire).
pub fn negotiated_version(
    config: &StorvspConfig,
    proposals: &[ProtocolVersion],
) -> Option<ProtocolVersion> {
    proposals
        .iter()
        .copied()
        .find(|v| config.versions.contains(v))
}
