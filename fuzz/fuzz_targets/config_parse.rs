//! The config loader (`netmigrate check-config`, `serve`, `reload`): any text gives a config or
//! a list of problems, each at a line of that text with a message. Any panic is a crash.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use netmigrate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    // A folder that does not exist: relative paths in the text resolve under it, so nothing
    // the fuzzer writes names a real file by accident.
    let path = Path::new("/nonexistent-netmigrate-fuzz/netmigrate.toml");
    match Config::parse(path, src) {
        Ok(cfg) => {
            let _ = cfg.summary();
            assert!(
                Config::parse(path, src).is_ok(),
                "the same text parsed twice gave two answers"
            );
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "an error without problems");
            let lines = src.lines().count().max(1) + 1;
            for e in &errs.0 {
                assert!(!e.message.trim().is_empty(), "a problem without a message");
                assert!(e.line <= lines, "line {} of a {lines}-line text", e.line);
            }
        }
    }
});
