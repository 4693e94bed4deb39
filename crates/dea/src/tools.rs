//! Tools Strato puts inside every instance (read-only, on `PATH`): `dbexport` and
//! `dbshell`, so `strato run APP dbexport SERVICE > dump.sql` and
//! `strato run APP dbshell SERVICE < dump.sql` work as they did on Stackato. They use the
//! host's database clients, which the stack's `/usr` already carries.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Where the tools appear inside containers.
pub const CONTAINER_DIR: &str = "/home/stackato/bin";

const TOOLS: &[(&str, &str, u32)] = &[
    ("dbexport", include_str!("../tools/dbexport"), 0o755),
    ("dbshell", include_str!("../tools/dbshell"), 0o755),
    (
        "strato_services.py",
        include_str!("../tools/strato_services.py"),
        0o644,
    ),
];

/// Writes the tools into `dir` (replacing older copies), readable by everyone.
pub fn install(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for (name, text, mode) in TOOLS {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(*mode))?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_installed_executable() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path()).unwrap();
        install(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("dbexport"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(std::fs::read_to_string(dir.path().join("dbshell"))
            .unwrap()
            .starts_with("#!/usr/bin/python3"));
    }
}
