//! Executing SRBs for a [`StorvspWorker`](super::StorvspWorker): a request on its way ([`Job`]), its
//! completion ([`Done`]), what every executor shares ([`Shared`]: the SCSI controller and guest memory)
//! and the pool of I/O threads ([`Pool`]).
//!
//! A request is executed with its panics contained ([`Shared::execute_contained`]), on a pool thread
//! or inline on the device thread alike: a backend (or controller) that panics on one request turns
//! that request into a failed I/O — CHECK CONDITION with HARDWARE ERROR / INTERNAL TARGET FAILURE sense —
//! counted ([`Done::panicked`]) and logged (rate-limited), and the executor goes on with fresh
//! per-executor storage, as a new thread would. So a panicking request never leaves the worker
//! waiting for a completion that cannot come, never closes the pool's queues under it, and never
//! unwinds through the device thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use storvsp_protocol::scsi::{AdditionalSense, SenseKey};
use storvsp_protocol::{srb_flags, NtStatus, Operation, SrbStatus, VstorPacket, SENSE_BUFFER_SIZE};

use super::request::{DataBuffer, Segment};
use super::scsi::{ExecStorage, ScsiController, ScsiOutcome};
use crate::guest_memory::GuestMemoryMmap;

/// A request on its way to an executor.
pub(super) struct Job {
    pub trans_id: u64,
    pub packet: VstorPacket,
    pub segments: Vec<Segment>,
    pub data_len: u64,
    pub sense_len: usize,
}

/// A completion waiting to be written.
pub(super) struct Done {
    pub trans_id: u64,
    pub packet: VstorPacket,
    pub bytes: u64,
    pub good: bool,
    /// Executing the request panicked (it completes as a failed I/O).
    pub panicked: bool,
    /// The request's segment list, back for reuse (empty for control requests).
    pub segments: Vec<Segment>,
}

/// What executors share.
pub(super) struct Shared {
    pub controller: ScsiController,
    pub memory: GuestMemoryMmap,
    pub notifier: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

impl Shared {
    pub fn notify(&self) {
        let notifier = self
            .notifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(f) = notifier {
            f();
        }
    }

    /// [`execute`](Self::execute) with its panics contained: a panic completes the request as a
    /// failed I/O (HARDWARE ERROR, INTERNAL TARGET FAILURE) with no data, and `storage` — which the
    /// panic may have left half-updated — is replaced.
    pub fn execute_contained(&self, job: Job, storage: &mut ExecStorage) -> Done {
        let (trans_id, packet, sense_len) = (job.trans_id, job.packet, job.sense_len);
        match catch_unwind(AssertUnwindSafe(|| self.execute(job, storage))) {
            Ok(done) => done,
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                crate::guest_error!(
                    trans_id,
                    panic = %what,
                    "storvsp: executing a request panicked; it fails with HARDWARE ERROR"
                );
                *storage = ExecStorage::new(self.controller.max_transfer());
                let outcome = ScsiOutcome::check(
                    SenseKey::HARDWARE_ERROR,
                    AdditionalSense::INTERNAL_TARGET_FAILURE,
                );
                let mut done = complete_srb(trans_id, packet, sense_len, &outcome, Vec::new());
                done.panicked = true;
                done
            }
        }
    }

    /// Runs an SRB and builds its completion.
    fn execute(&self, job: Job, storage: &mut ExecStorage) -> Done {
        let srb = job.packet.srb();
        let requested = u64::from(srb.data_transfer_length.get());
        let outcome = if requested > job.data_len {
            tracing::debug!(
                requested,
                buffer = job.data_len,
                "storvsp: data_transfer_length beyond the buffer"
            );
            ScsiOutcome::srb(SrbStatus::INVALID_REQUEST)
        } else {
            let buf = DataBuffer::new(&self.memory, &job.segments, requested);
            self.controller.execute(&srb, &buf, storage)
        };
        complete_srb(
            job.trans_id,
            job.packet,
            job.sense_len,
            &outcome,
            job.segments,
        )
    }
}

/// The COMPLETE_IO answer to the SRB in `request`, reporting `outcome` (sense data as far as the
/// guest's sense buffer and its autosense setting allow).
fn complete_srb(
    trans_id: u64,
    request: VstorPacket,
    sense_len: usize,
    outcome: &ScsiOutcome,
    segments: Vec<Segment>,
) -> Done {
    let mut srb = request.srb();
    srb.srb_status = outcome.srb_status.0;
    srb.scsi_status = outcome.scsi_status.0;
    srb.data_transfer_length.set(outcome.transferred);
    srb.cdb_or_sense = [0; SENSE_BUFFER_SIZE];
    srb.sense_info_length = 0;
    if let Some(sense) = &outcome.sense {
        let allowed = usize::from(request.srb().sense_info_length).min(sense_len);
        let autosense = srb.srb_flags.get() & srb_flags::DISABLE_AUTOSENSE == 0;
        let bytes = sense.to_bytes();
        let n = bytes.len().min(allowed);
        if autosense && n > 0 {
            srb.cdb_or_sense[..n].copy_from_slice(&bytes[..n]);
            srb.sense_info_length = n as u8;
        } else {
            srb.srb_status &= !SrbStatus::AUTOSENSE_VALID;
        }
    }
    let mut packet = request;
    packet.operation.set(Operation::COMPLETE_IO.0);
    packet.set_status(NtStatus::SUCCESS);
    packet.set_srb(&srb);
    Done {
        trans_id,
        packet,
        bytes: u64::from(outcome.transferred),
        good: outcome.is_good(),
        panicked: false,
        segments,
    }
}

/// Executor threads: jobs in through one queue, completions out through another.
pub(super) struct Pool {
    pub jobs: Option<SyncSender<Job>>,
    pub done: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// `threads` executors; at most `depth` requests are ever in flight, so neither queue blocks.
    pub fn start(shared: &Arc<Shared>, threads: usize, depth: usize) -> std::io::Result<Self> {
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(depth);
        let (done_tx, done_rx) = mpsc::sync_channel::<Done>(depth);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let shared = shared.clone();
            // Serves the same partition as the device thread starting it.
            let handle = crate::device_threads::spawn(format!("storvsp-io-{i}"), move || {
                let mut storage = ExecStorage::new(shared.controller.max_transfer());
                loop {
                    let job = job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(job) = job else { return };
                    if done_tx
                        .send(shared.execute_contained(job, &mut storage))
                        .is_err()
                    {
                        return;
                    }
                    shared.notify();
                }
            })?;
            handles.push(handle);
        }
        Ok(Self {
            jobs: Some(job_tx),
            done: done_rx,
            threads: handles,
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the job queue ends every thread once it finishes its current job.
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
