//! Fuzzes `Envelope::decode`: it must never panic, and whatever it accepts
//! must encode back to the same bytes.
#![no_main]

use kabar_crypto::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        assert_eq!(envelope.encode(), data);
        let _ = envelope.message_id();
    }
});
