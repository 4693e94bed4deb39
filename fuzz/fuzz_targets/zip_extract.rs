//! App uploads (zips from users): the stager's extraction into the build dir and the
//! controller's check-and-repack of an upload. Whatever the bytes: no panic, nothing
//! written outside the extraction dir (or the controller's resource cache and blob
//! store), and every symlink left in the build dir points inside it.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

/// The expansion limit of the stager and the controller (small, so zip bombs end quickly).
const MAX_BYTES: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let sandbox = common::Sandbox::new();
    let extracted =
        strato_stager::extract::extract_zip(std::io::Cursor::new(data), &sandbox.dest, MAX_BYTES);
    let outside = sandbox.written_outside(&[]);
    assert!(
        outside.is_empty(),
        "the stager wrote outside the build dir: {outside:?}"
    );
    if extracted.is_ok() {
        for link in common::symlinks_under(&sandbox.dest) {
            assert!(
                common::link_stays_inside(&sandbox.dest, &link),
                "the stager left a symlink pointing out: {} -> {:?}",
                link.display(),
                std::fs::read_link(&link)
            );
        }
    }

    let upload = sandbox.own("upload.zip");
    let resources = sandbox.own("resources");
    let blobs_dir = sandbox.own("blobs");
    std::fs::write(&upload, data).expect("writing the upload");
    let blobs = strato_blobs::BlobStore::open(&blobs_dir).expect("a blob store");
    let _ =
        strato_controller::bits::build_package(Some(&upload), &[], &resources, &blobs, MAX_BYTES);
    let outside = sandbox.written_outside(&[upload, resources, blobs_dir]);
    assert!(
        outside.is_empty(),
        "the controller wrote outside its dirs: {outside:?}"
    );
});
