//! Arbitrary bytes as a VMBus channel message from the guest, parsed as the host would.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmbus::protocol::parse_message(data);
});
