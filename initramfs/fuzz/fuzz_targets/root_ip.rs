//! Fuzzes `root=`, `ip=` and the whole command line: no panic, errors point inside the
//! input, and a parsed `root=` written back parses to the same devices.
#![no_main]

use libfuzzer_sys::fuzz_target;
use napalm_initramfs::cmdline::BootConfig;
use napalm_initramfs::ip::IpConfig;
use napalm_initramfs::rootspec::RootSpec;
use napalm_initramfs::union;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    match RootSpec::parse(s) {
        Ok(spec) => {
            let back: Vec<String> = spec.devices.iter().map(|d| d.display()).collect();
            let again = RootSpec::parse(&back.join(";")).expect("a parsed root= written back must parse");
            assert_eq!(again.devices.len(), spec.devices.len());
            for (a, b) in spec.devices.iter().zip(&again.devices) {
                assert_eq!((&a.kind, &a.params), (&b.kind, &b.params));
                assert!(a.offset < s.len());
            }
            let _ = spec.upper();
            let _ = union::validate(&spec);
        }
        Err(e) => {
            assert!(e.position <= s.len(), "error position {} past the input", e.position);
            let _ = e.to_string();
        }
    }
    match IpConfig::parse(s) {
        Ok(_) => {}
        Err(e) => {
            assert!(e.position <= s.len());
            let _ = e.to_string();
        }
    }
    let _ = BootConfig::parse(s);
});
