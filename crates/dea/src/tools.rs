//! Tools Strato puts inside every instance (read-only, on `PATH`): `dbexport` and
//! `dbshell`, so `strato run APP dbexport SERVICE > dump.sql` and
//! `strato run APP dbshell SERVICE < dump.sql` work as they did on Stackato (they use the
//! host's database clients, which the stack's `/usr` already carries), and the `cron:`
//! scheduler of instance 0.

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
    (
        CRON_SCHEDULER,
        include_str!("../tools/strato_cron.py"),
        0o755,
    ),
];

/// The `cron:` scheduler started next to instance 0 (see `tools/strato_cron.py`).
pub const CRON_SCHEDULER: &str = "strato_cron.py";

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

    /// The scheduler runs `* * * * *` lines every (test-shortened) minute, others only when
    /// due, and skips lines that are not crontab syntax.
    #[test]
    fn cron_scheduler_runs_due_lines() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path()).unwrap();
        let out = dir.path().join("out.txt");
        let mut child = std::process::Command::new("/usr/bin/python3")
            .arg(dir.path().join(CRON_SCHEDULER))
            .arg(format!("* * * * * echo every >> {}", out.display()))
            .arg(format!("0 3 31 2 * echo never >> {}", out.display()))
            .arg("not a cron line")
            .env("STRATO_CRON_TICK_SECONDS", "0.1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let count = || {
            std::fs::read_to_string(&out)
                .map(|t| t.lines().filter(|l| *l == "every").count())
                .unwrap_or(0)
        };
        while count() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child.kill().unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(count() >= 3, "ran every tick");
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(!text.contains("never"), "{text}");
        let log = String::from_utf8_lossy(&output.stdout);
        assert!(log.contains("skipping 'not a cron line'"), "{log}");
    }
}
