//! `strato run`, `files`, `scp` and `ssh` against a micro cloud, as a user runs them: the
//! command's output and exit code come back, stdin goes in, files are listed and copied
//! both ways, and an interactive shell works under a pseudo-terminal.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strato_e2e::{bin, MicroCloud};

const APP: &str = "staticfixture";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_files_scp_and_ssh() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    mc.push_static();
    let here = mc.client_home.path();

    // run: stdout to stdout, stderr to stderr, the command's exit code as ours.
    let started = Instant::now();
    let out = mc.strato(
        here,
        &[
            "run",
            APP,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    println!("strato run took {:?}", started.elapsed());
    assert_eq!(text(&out.stdout), "out\n", "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(3));
    // It runs in the app dir, with options of its own after the app name.
    let out = mc.strato_ok(here, &["run", APP, "ls", "-a"]);
    assert!(out.lines().any(|l| l == "index.html"), "{out}");

    // Stdin passes through when it is not a terminal.
    let out = mc.strato_input(
        mc.client_home.path(),
        &["run", APP, "sh", "-c", "cat > piped.txt; cat piped.txt"],
        b"piped line\n",
    );
    assert_eq!(text(&out.stdout), "piped line\n", "{}", text(&out.stderr));
    assert!(out.status.success());

    // --all prefixes every line with the instance index.
    let out = mc.strato_ok(here, &["run", APP, "--all", "echo", "hi"]);
    assert_eq!(out, "[0] hi\n");

    // files: the app dir, a file in it, and nothing outside it.
    let out = mc.strato_ok(here, &["files", APP]);
    assert!(out.contains("index.html"), "{out}");
    assert!(out.contains("piped.txt"), "{out}");
    let out = mc.strato_ok(here, &["files", APP, "index.html"]);
    assert!(out.contains("hello from static"), "{out}");
    let out = mc.strato(here, &["files", APP, "../staging_info.json"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains(".."), "{}", text(&out.stderr));
    let out = mc.strato(here, &["files", APP, "no-such-file"]);
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );

    // scp a binary file in and back out, unchanged.
    let local = here.join("upload.bin");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &payload).unwrap();
    mc.strato_ok(here, &["scp", "upload.bin", &format!("{APP}:copied.bin")]);
    let out = mc.strato_ok(here, &["run", APP, "wc", "-c", "copied.bin"]);
    assert!(out.starts_with(&payload.len().to_string()), "{out}");
    mc.strato_ok(here, &["scp", &format!("{APP}:copied.bin"), "back.bin"]);
    assert!(
        std::fs::read(here.join("back.bin")).unwrap() == payload,
        "scp round trip changed the file"
    );
    let out = mc.strato(here, &["scp", &format!("{APP}:missing.bin"), "missing.bin"]);
    assert!(!out.status.success());
    assert!(
        !here.join("missing.bin").exists(),
        "a failed copy leaves no file behind"
    );

    // ssh: a shell under a pty, its output, its exit code, the terminal restored.
    ssh_under_a_pty(&mc);

    // A command for a stopped app is refused with a hint.
    mc.strato_ok(here, &["stop", APP]);
    let out = mc.strato(here, &["run", APP, "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("strato start"),
        "{}",
        text(&out.stderr)
    );
}

fn ssh_under_a_pty(mc: &MicroCloud) {
    use nix::sys::termios::{tcgetattr, LocalFlags};
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: 30,
            ws_col: 90,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )
    .unwrap();
    let before = tcgetattr(&pty.slave).unwrap();
    assert!(before
        .local_flags
        .contains(LocalFlags::ECHO | LocalFlags::ICANON));
    let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    let mut child = Command::new(bin("strato"))
        .args(["ssh", APP])
        .current_dir(mc.client_home.path())
        .env("HOME", mc.client_home.path())
        .env("TERM", "xterm")
        .env_remove("STRATO_TARGET")
        .stdin(stdio(&pty.slave))
        .stdout(stdio(&pty.slave))
        .stderr(stdio(&pty.slave))
        .spawn()
        .expect("run strato ssh");
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |needle: &str, seen: &mut Vec<u8>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !text(seen).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => seen.extend(chunk),
                Err(_) => panic!("'{needle}' did not show; terminal so far:\n{}", text(seen)),
            }
        }
    };
    master
        .write_all(b"echo hi-$((1+1)); tty; stty size\n")
        .unwrap();
    wait_for("hi-2", &mut seen);
    wait_for("/dev/pts/", &mut seen);
    wait_for("30 90", &mut seen);
    master.write_all(b"exit 4\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("strato ssh did not end after `exit`:\n{}", text(&seen));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(4), "{}", text(&seen));
    let after = tcgetattr(&pty.slave).unwrap();
    assert!(
        after
            .local_flags
            .contains(LocalFlags::ECHO | LocalFlags::ICANON),
        "the terminal is back in cooked mode"
    );
}

/// The app's disk quota is enforced by the kernel: the instance dir is a filesystem of the
/// app's `disk:` size, so writing past it fails with ENOSPC inside the container.
#[test]
fn the_disk_quota_is_enforced_inside_the_instance() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("stackato.yml"),
        "name: quotaapp\nmem: 64M\ndisk: 32M\n",
    )
    .unwrap();
    std::fs::write(app.path().join("index.html"), "<p>quota</p>\n").unwrap();
    mc.strato_ok(app.path(), &["push", "-n"]);
    mc.wait_for("quotaapp.localhost", "/", "quota", Duration::from_secs(30));
    let out = mc.strato(
        mc.client_home.path(),
        &[
            "run",
            "quotaapp",
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero of=big bs=1M count=64",
        ],
    );
    assert!(!out.status.success(), "64 MB do not fit in 32 MB: {out:?}");
    assert!(
        text(&out.stderr).contains("No space left"),
        "the kernel says why: {}",
        text(&out.stderr)
    );
    let out = mc.strato(
        mc.client_home.path(),
        &[
            "run",
            "quotaapp",
            "--",
            "sh",
            "-c",
            "rm -f big; dd if=/dev/zero of=ok bs=1M count=8 && echo wrote",
        ],
    );
    assert!(
        text(&out.stdout).contains("wrote"),
        "room within the quota: {out:?}"
    );
    mc.strato_ok(mc.client_home.path(), &["delete", "quotaapp", "-n"]);
    // The instance stops (SIGTERM, then the container is removed) after delete returns.
    let home = mc.home.path().to_string_lossy().to_string();
    let mounted = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&home))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until && !mounted().is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        mounted().is_empty(),
        "the quota is unmounted with the instance: {:?}",
        mounted()
    );
}

/// As Stackato allowed: `run` (and `ssh`) reach a crashed instance's files in a container
/// of their own while the DEA keeps them, to find out why it crashed.
#[test]
fn run_inspects_a_crashed_instance() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("Procfile"),
        "web: echo 'why it crashed' > crash-note.txt; exit 3\n",
    )
    .unwrap();
    std::fs::write(app.path().join("stackato.yml"), "name: crasher\nmem: 64M\n").unwrap();
    // The push reports the failed start; the instance is kept as crashed.
    let _ = mc.strato(app.path(), &["push", "-n"]);
    let here = mc.client_home.path();
    // The health manager keeps restarting the app, so a command may meet an instance that
    // is starting (and crashes under it): try again until one reaches a crashed copy.
    let run_until_ok = |args: &[&str]| -> String {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let out = mc.strato(here, args);
            if out.status.success() {
                return text(&out.stdout);
            }
            assert!(
                Instant::now() < until,
                "never reached the crashed instance: {}\n{}",
                text(&out.stderr),
                mc.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let out = run_until_ok(&["run", "crasher", "cat", "crash-note.txt"]);
    assert_eq!(out, "why it crashed\n");
    // It is an inspection container: the app's command is not running there.
    let out = run_until_ok(&["run", "crasher", "ps", "-e", "-o", "comm="]);
    assert!(out.contains("sleep"), "{out}");
}
