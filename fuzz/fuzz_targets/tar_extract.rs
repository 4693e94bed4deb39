//! Droplets (gzipped tars): the DEA's unpacking into an instance dir and the stager's
//! reading of `staging_info.json`. Whatever the bytes: no panic and nothing written
//! outside the instance dir. The input is the tar itself (gzipped here, so the fuzzer
//! works on the tar structure), or an already gzipped droplet.
#![no_main]

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;

use libfuzzer_sys::fuzz_target;

fn gzipped(data: &[u8]) -> Vec<u8> {
    if data.starts_with(&[0x1f, 0x8b]) {
        return data.to_vec();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip in memory");
    gz.finish().expect("gzip in memory")
}

fuzz_target!(|data: &[u8]| {
    let sandbox = common::Sandbox::new();
    let droplet = sandbox.own("droplet.tgz");
    std::fs::write(&droplet, gzipped(data)).expect("writing the droplet");
    // The instance dir is handed to the user running the fuzzer (the DEA's app user).
    let me = std::fs::metadata(sandbox.root.path()).expect("the sandbox");
    let _ = strato_dea::droplet::unpack(&droplet, &sandbox.dest, me.uid(), me.gid());
    let outside = sandbox.written_outside(std::slice::from_ref(&droplet));
    assert!(
        outside.is_empty(),
        "the DEA wrote outside the instance dir: {outside:?}"
    );
    let _ = strato_stager::droplet::read_staging_info(&droplet);
});
