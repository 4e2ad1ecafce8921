//! Any text given as a cases file or as `explain --request` is refused with
//! diagnostics or parsed; never a panic.
#![no_main]

use dermgate_policy::{Cases, RequestSpec, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let now = Timestamp::UNIX_EPOCH;
    if let Err(d) = Cases::parse("cases.toml", text, now) {
        let _ = d.render();
    }
    if let Err(d) = RequestSpec::parse("--request", text, now) {
        let _ = d.render();
    }
});
