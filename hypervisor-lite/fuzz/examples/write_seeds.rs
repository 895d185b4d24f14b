//! Writes the checked-in seed corpora of this crate's fuzz targets (`seeds/<target>/`): short step
//! sequences in each target's input format doing what a Linux guest does (enable hypercalls, post a
//! message, signal an event; set up SIMP/SIEFP/SINT2, receive, free the slot, EOM) and a few
//! hostile variations.
//!
//! Run from `hypervisor-lite/fuzz`: `cargo run --example write_seeds`.

use std::fs;
use std::path::Path;

fn write(target: &str, name: &str, steps: &[&[u8]]) {
    let dir = Path::new("seeds").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), steps.concat()).unwrap();
}

// hypercall_inputs steps: [vp, op, ...]; op 0 hypercall, 3 post block, 4 raw bytes, 5 doorbell, 6 MSRs.
const ENABLED: &[u8] = &[0];
const DISABLED: &[u8] = &[1];
/// GPA selector 0: page `n` of RAM.
fn page(n: u8) -> [u8; 3] {
    [0, n, 0]
}

fn main() {
    // Post block at page 2: connection selector 0 (id 1), type selector 0 (1), size 3, 3 payload bytes.
    let post_block: &[u8] = &[0, 3, 0, 2, 0, 0, 0, 3, 3, b'a', b'b', b'c'];
    let post_call = [&[0u8, 0, 0, 0, 1][..], &page(2), &page(0)].concat();
    write(
        "hypercall_inputs",
        "post_message",
        &[ENABLED, post_block, &post_call],
    );
    // Same block for connection 4 (handler answers 0x13), posted from VP 1.
    let post_block_4: &[u8] = &[1, 3, 0, 2, 0, 1, 0, 3, 3, b'x', b'y', b'z'];
    let post_call_vp1 = [&[1u8, 0, 0, 0, 1][..], &page(2), &page(0)].concat();
    write(
        "hypercall_inputs",
        "post_message_full",
        &[ENABLED, post_block_4, &post_call_vp1],
    );
    // Fast HvSignalEvent of connection 0x2A (input selector 0: a u32 argument).
    let fast: &[u8] = &[0, 0, 2, 1, 0, 0x2A, 0, 0, 0, 0, 0, 0];
    write("hypercall_inputs", "signal_fast", &[ENABLED, fast]);
    // Slow HvSignalEvent: the argument written at 0x3000, then a call with input GPA page 3.
    let raw: &[u8] = &[0, 4, 0x00, 0x30, 8, 5, 0, 0, 0, 0, 0, 0, 0];
    let slow = [&[0u8, 0, 2, 0, 1][..], &page(3), &page(0)].concat();
    write("hypercall_inputs", "signal_slow", &[ENABLED, raw, &slow]);
    // Doorbells: a registered id, then one with reserved bits.
    let doorbells: &[u8] = &[0, 5, 0, 1, 5, 2, 0x2A, 0, 0, 0xFF];
    write("hypercall_inputs", "doorbells", &[ENABLED, doorbells]);
    // A call while disabled, enable the page at page 3, call again; then a rep count and a reserved bit.
    let enable: &[u8] = &[0, 6, 1, 3];
    let rep = [&[0u8, 0, 0, 0b1010, 5, 0, 2][..], &[1, 1, 0], &page(0)].concat();
    write(
        "hypercall_inputs",
        "enable_and_bad_controls",
        &[DISABLED, &slow, enable, &slow, &rep],
    );

    // synic_msr_writes steps: [op, vp, ...]; op 0 WRMSR, 3 RDMSR, 4 post, 5 signal, 6 guest write, 7 EOM.
    let simp_page5: &[u8] = &[0, 0, 7, 1, 2, 5];
    let siefp_page6: &[u8] = &[0, 0, 6, 1, 2, 6];
    let sint2: &[u8] = &[0, 0, 12, 0xF3, 0];
    let scontrol: &[u8] = &[0, 0, 4, 1];
    let setup = [simp_page5, siefp_page6, sint2, scontrol].concat();
    let post_hello: &[u8] = &[4, 0, 2, 1, 5, b'h', b'e', b'l', b'l', b'o'];
    let free_slot2: &[u8] = &[6, 0, 0, 2, 4, 0, 0, 0, 0];
    let eom: &[u8] = &[7, 0];
    let signal: &[u8] = &[5, 0, 2, 5, 0];
    write(
        "synic_msr_writes",
        "linux_message_flow",
        &[
            &setup, post_hello, post_hello, post_hello, free_slot2, eom, signal, signal,
        ],
    );
    // SIMP past the end of RAM (value choice 0, GPA selector 4), then posts until the queue is full.
    let simp_outside: &[u8] = &[0, 1, 7, 1, 0, 4, 2, 0];
    let post_vp1: &[u8] = &[4, 1, 2, 1, 1, b'!'];
    write(
        "synic_msr_writes",
        "simp_outside_ram",
        &[
            simp_outside,
            &[0, 1, 12, 0xF3, 0],
            &[0, 1, 4, 1],
            post_vp1,
            post_vp1,
            post_vp1,
            post_vp1,
            post_vp1,
            post_vp1,
            eom,
        ],
    );
    // Unknown, read-only and reserved-vector writes; reads of every kind.
    write(
        "synic_msr_writes",
        "faults_and_reads",
        &[
            &[0, 0, 9, 1, 0, 0, 0, 0, 0, 0, 0],
            &[0, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0],
            &[0, 0, 5, 1, 0, 0, 0, 0, 0, 0, 0],
            &[0, 0, 10, 5, 0],
            &[0, 0, 10, 5, 1],
            &[3, 0, 2, 3, 1, 5, 3, 0, 255, 0x90, 0, 0, 0x40],
            &[0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        ],
    );
    // The hypercall MSR: before the guest id (ignored), after it, locked, and the VP assist page.
    write(
        "synic_msr_writes",
        "hypercall_msrs",
        &[
            &[0, 0, 1, 1, 2, 3],
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x81],
            &[0, 0, 1, 3, 2, 3],
            &[0, 0, 1, 1, 2, 4],
            &[0, 1, 3, 1, 2, 9],
        ],
    );
}
