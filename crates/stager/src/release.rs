//! What a staged app runs: the buildpack's `bin/release` YAML and the app's `Procfile`.
//!
//! `bin/release` prints YAML with `default_process_types: {web: CMD}`; a `Procfile` line
//! `web: CMD` in the app always wins over it, whichever buildpack staged the app.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The parts of `bin/release` output Strato uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ReleaseInfo {
    #[serde(default)]
    pub default_process_types: BTreeMap<String, String>,
}

/// Why release output could not be used.
#[derive(Debug, thiserror::Error)]
#[error("the buildpack's bin/release printed invalid YAML ({0}); it must print `default_process_types: {{web: COMMAND}}`")]
pub struct ReleaseError(String);

/// Parses `bin/release` output. Empty output means no process types.
pub fn parse_release(yaml: &str) -> Result<ReleaseInfo, ReleaseError> {
    if yaml.trim().trim_start_matches("---").trim().is_empty() {
        return Ok(ReleaseInfo::default());
    }
    let info: Option<ReleaseInfo> =
        serde_saphyr::from_str(yaml).map_err(|e| ReleaseError(e.to_string()))?;
    Ok(info.unwrap_or_default())
}

/// Parses a `Procfile`: `name: command` lines; blank lines and `#` comments are skipped.
pub fn parse_procfile(text: &str) -> BTreeMap<String, String> {
    let mut processes = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((name, command)) = line.split_once(':') {
            let (name, command) = (name.trim(), command.trim());
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if valid_name && !command.is_empty() {
                processes
                    .entry(name.to_string())
                    .or_insert_with(|| command.to_string());
            }
        }
    }
    processes
}

/// The `web` command of the app's `Procfile`, if it has one.
pub fn procfile_web(app_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(app_dir.join("Procfile")).ok()?;
    parse_procfile(&text).remove("web")
}

/// The start command: the Procfile's `web`, else the release's `web`.
pub fn start_command(procfile_web: Option<String>, release: &ReleaseInfo) -> Option<String> {
    procfile_web.or_else(|| {
        release
            .default_process_types
            .get("web")
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_yaml_gives_the_web_command() {
        let info = parse_release(
            "---\naddons: []\nconfig_vars:\n  X: 1\ndefault_process_types:\n  web: '.venv/bin/python app.py --say ''hi'''\n  worker: run-worker\n",
        )
        .unwrap();
        assert_eq!(
            info.default_process_types.get("web").map(String::as_str),
            Some(".venv/bin/python app.py --say 'hi'")
        );
        assert_eq!(info.default_process_types.len(), 2);
    }

    #[test]
    fn empty_release_has_no_processes_and_garbage_is_an_error() {
        assert_eq!(parse_release("---\n").unwrap(), ReleaseInfo::default());
        assert_eq!(parse_release("").unwrap(), ReleaseInfo::default());
        assert_eq!(
            parse_release("default_process_types: {}\n").unwrap(),
            ReleaseInfo::default()
        );
        assert!(parse_release("default_process_types: [1, 2").is_err());
    }

    #[test]
    fn procfile_lines_and_precedence() {
        let p = parse_procfile(
            "# comment\nweb: /bin/sh ./run.sh\r\nworker:  python w.py\nbad line\nweb: second\n",
        );
        assert_eq!(p.get("web").map(String::as_str), Some("/bin/sh ./run.sh"));
        assert_eq!(p.get("worker").map(String::as_str), Some("python w.py"));
        assert_eq!(p.len(), 2);
        let release = parse_release("default_process_types:\n  web: npm start\n").unwrap();
        assert_eq!(
            start_command(Some("from procfile".into()), &release).as_deref(),
            Some("from procfile")
        );
        assert_eq!(start_command(None, &release).as_deref(), Some("npm start"));
        assert_eq!(start_command(None, &ReleaseInfo::default()), None);
    }
}
