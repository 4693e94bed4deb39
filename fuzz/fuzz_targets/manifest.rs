//! `stackato.yml` / `manifest.yml` reader of the client: whatever the files say, it
//! returns apps or an error, never panics. The input is one file's text, or both files'
//! texts separated by a NUL byte (`manifest.yml` first).
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use strato_cli::manifest::{self, Builtins, LoadOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let builtins = Builtins {
        target_base: Some("example.com".into()),
        target_url: Some("https://api.example.com".into()),
    };
    let given = BTreeSet::from(["GIVEN".to_string()]);
    let opts = LoadOptions {
        builtins: &builtins,
        ask: None,
        env_given: &given,
    };
    let inputs = match text.split_once('\0') {
        Some((manifest_yml, stackato_yml)) => vec![(Some(manifest_yml), Some(stackato_yml))],
        None => vec![(Some(text), None), (None, Some(text))],
    };
    for (manifest_yml, stackato_yml) in inputs {
        let Ok(apps) = manifest::parse_texts(manifest_yml, stackato_yml, &opts, None) else {
            continue;
        };
        for app in &apps {
            let _ = manifest::check_client_version(app);
            let _ = manifest::check_server_version(app, Some("3.6.2"));
            if let Some(name) = &app.name {
                let _ = manifest::parse_texts(manifest_yml, stackato_yml, &opts, Some(name));
            }
        }
    }
});
