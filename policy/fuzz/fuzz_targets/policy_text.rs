//! Any text given as a policy is refused with diagnostics or compiled; a
//! compiled one evaluates and explains a request without panicking.
#![no_main]

use dermgate_policy::{Policy, RequestSpec, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Policy::from_str("fuzz.toml", text, Some(&["ehr", "imaging", "video"])) {
        Err(d) => {
            let _ = d.render();
        }
        Ok(p) => {
            let _ = p.version();
            let mut q = RequestSpec::new(
                "ehr",
                "GET",
                "/room/r1/x",
                std::net::IpAddr::from([10, 1, 2, 3]),
                Timestamp::UNIX_EPOCH,
            );
            q.user = Some("u".into());
            q.groups = vec!["clinicians".into()];
            q.visit_room = Some("r1".into());
            let _ = p.evaluate(&q.facts());
            let _ = p.explain(&q.facts()).to_string();
        }
    }
});
