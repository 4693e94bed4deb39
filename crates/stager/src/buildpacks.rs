//! Buildpacks: the built-in ones shipped inside the stager, and custom ones named by the
//! app (a local directory or a git URL).
//!
//! A buildpack is a directory with `bin/detect`, `bin/compile` and `bin/release` (the Cloud
//! Foundry buildpack API). The built-ins are shell scripts embedded in the binary and written
//! out into a buildpacks dir at startup, so a node needs nothing but the `strato` binaries
//! and the host's `/usr/bin/python3`, `node` and `npm`.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// One built-in buildpack: its name and its three scripts.
pub struct BuiltinBuildpack {
    pub name: &'static str,
    detect: &'static str,
    compile: &'static str,
    release: &'static str,
}

macro_rules! builtin {
    ($name:literal) => {
        BuiltinBuildpack {
            name: $name,
            detect: include_str!(concat!("../buildpacks/", $name, "/bin/detect")),
            compile: include_str!(concat!("../buildpacks/", $name, "/bin/compile")),
            release: include_str!(concat!("../buildpacks/", $name, "/bin/release")),
        }
    };
}

/// Every built-in buildpack.
pub const BUILTINS: &[BuiltinBuildpack] = &[
    builtin!("python"),
    builtin!("node"),
    builtin!("static"),
    builtin!("procfile"),
];

/// The default detection order. `procfile` comes last: an app with a Procfile and a
/// `requirements.txt` still needs pip, and every pack honours the Procfile's `web` line.
pub fn default_order() -> Vec<String> {
    ["python", "node", "static", "procfile"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The names of the built-ins.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
}

/// Where the `static` pack keeps the file server it copies into apps.
pub const STATIC_SERVER_VENDOR_PATH: &str = "static/vendor/strato-static";

/// Writes every built-in into `dir/<name>/bin/*` (mode 0755), replacing what was there, and
/// copies `static_server` (the `strato-static` binary) into the static pack when given.
pub fn materialise(dir: &Path, static_server: Option<&Path>) -> io::Result<()> {
    for pack in BUILTINS {
        let bin = dir.join(pack.name).join("bin");
        fs::create_dir_all(&bin)?;
        for (step, script) in [
            ("detect", pack.detect),
            ("compile", pack.compile),
            ("release", pack.release),
        ] {
            write_executable(&bin.join(step), script.as_bytes())?;
        }
        set_mode(&dir.join(pack.name), 0o755)?;
        set_mode(&bin, 0o755)?;
    }
    set_mode(dir, 0o755)?;
    if let Some(server) = static_server {
        let dest = dir.join(STATIC_SERVER_VENDOR_PATH);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
            set_mode(parent, 0o755)?;
        }
        let temp = dest.with_extension("incoming");
        fs::copy(server, &temp)?;
        set_mode(&temp, 0o755)?;
        fs::rename(&temp, &dest)?;
    }
    Ok(())
}

fn write_executable(path: &Path, content: &[u8]) -> io::Result<()> {
    let temp = path.with_extension("incoming");
    fs::write(&temp, content)?;
    set_mode(&temp, 0o755)?;
    fs::rename(&temp, path)
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Finds the `strato-static` binary: next to the current executable (or one directory up,
/// for test binaries in `target/*/deps`), then on `PATH`.
pub fn find_static_server() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("strato-static"))
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("strato-static")));
    }
    candidates.into_iter().find(|c| c.is_file())
}

/// Which buildpack(s) to use for one staging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildpackChoice {
    /// Run `bin/detect` of these built-ins in order; the first that answers stages the app.
    Detect(Vec<String>),
    /// A built-in by name.
    Builtin(String),
    /// A buildpack directory on this node.
    Local(PathBuf),
    /// A git repository to clone (`URL` or `URL#branch`).
    Git { url: String, branch: Option<String> },
}

/// Why the requested buildpack cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BuildpackError {
    #[error("unknown buildpack '{name}': use one of {builtins}, a git URL or an absolute path to a buildpack directory")]
    Unknown { name: String, builtins: String },
    #[error("the buildpack at {0} has no executable bin/compile and bin/release")]
    Incomplete(PathBuf),
    #[error("git clone of buildpack {url} failed: {message}")]
    Clone { url: String, message: String },
}

/// Interprets the app's `buildpack:` value (`None` or empty: detect in `order`).
pub fn choose(
    requested: Option<&str>,
    order: &[String],
) -> Result<BuildpackChoice, BuildpackError> {
    let Some(name) = requested.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(BuildpackChoice::Detect(order.to_vec()));
    };
    if BUILTINS.iter().any(|b| b.name == name) {
        return Ok(BuildpackChoice::Builtin(name.to_string()));
    }
    if is_git_url(name) {
        let (url, branch) = match name.rsplit_once('#') {
            Some((url, branch)) if !branch.is_empty() => (url, Some(branch.to_string())),
            _ => (name.trim_end_matches('#'), None),
        };
        return Ok(BuildpackChoice::Git {
            url: url.to_string(),
            branch,
        });
    }
    let path = Path::new(name);
    if path.is_absolute() && path.is_dir() {
        return Ok(BuildpackChoice::Local(path.to_path_buf()));
    }
    Err(BuildpackError::Unknown {
        name: name.to_string(),
        builtins: builtin_names().join(", "),
    })
}

fn is_git_url(s: &str) -> bool {
    ["git://", "http://", "https://", "ssh://", "file://", "git@"]
        .iter()
        .any(|p| s.starts_with(p))
        || s.split('#')
            .next()
            .is_some_and(|u| u.ends_with(".git") && !Path::new(u).is_absolute())
}

/// Checks that `dir` looks like a buildpack (compile and release present).
pub fn check_buildpack_dir(dir: &Path) -> Result<(), BuildpackError> {
    let executable = |step: &str| {
        fs::metadata(dir.join("bin").join(step))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if executable("compile") && executable("release") {
        Ok(())
    } else {
        Err(BuildpackError::Incomplete(dir.to_path_buf()))
    }
}

/// `git clone --depth 1` of `url` into `dest` (which must not exist).
pub async fn clone(url: &str, branch: Option<&str>, dest: &Path) -> Result<(), BuildpackError> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(["clone", "--quiet", "--depth", "1"]);
    if let Some(branch) = branch {
        cmd.args(["--branch", branch]);
    }
    cmd.arg("--").arg(url).arg(dest);
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = cmd.output().await.map_err(|e| BuildpackError::Clone {
        url: url.to_string(),
        message: format!("cannot run git ({e}); install git on the stager node"),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BuildpackError::Clone {
            url: url.to_string(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// `(path, content)` pairs of a test app.
    type AppFiles<'a> = &'a [(&'a str, &'a str)];

    fn app(files: AppFiles) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        dir
    }

    /// Runs every built-in's detect against `app` on the host; returns the names that match.
    fn detected(packs: &Path, app: &Path) -> Vec<String> {
        default_order()
            .into_iter()
            .filter(|name| {
                let out = Command::new(packs.join(name).join("bin/detect"))
                    .arg(app)
                    .output()
                    .unwrap();
                if out.status.success() {
                    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), name);
                }
                out.status.success()
            })
            .collect()
    }

    fn release(packs: &Path, pack: &str, app: &Path) -> String {
        let out = Command::new(packs.join(pack).join("bin/release"))
            .arg(app)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info = crate::release::parse_release(&String::from_utf8_lossy(&out.stdout)).unwrap();
        info.default_process_types
            .get("web")
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn builtins_detect_the_right_apps() {
        let packs = tempfile::tempdir().unwrap();
        materialise(packs.path(), None).unwrap();
        let cases: &[(AppFiles, &[&str])] = &[
            (
                &[("requirements.txt", "flask\n"), ("app.py", "")],
                &["python"],
            ),
            (&[("wsgi.py", "")], &["python"]),
            (&[("package.json", "{}"), ("index.html", "")], &["node"]),
            (&[("index.html", "hi")], &["static"]),
            (&[("public/index.html", "hi")], &["static"]),
            (
                &[("Procfile", "web: ./run.sh\n"), ("index.html", "")],
                &["static", "procfile"],
            ),
            (&[("Procfile", "worker: ./w.sh\n")], &[]),
            (&[("README", "nothing")], &[]),
        ];
        for (files, expected) in cases {
            let dir = app(files);
            assert_eq!(detected(packs.path(), dir.path()), *expected, "{files:?}");
        }
    }

    #[test]
    fn procfile_web_wins_in_every_release() {
        let packs = tempfile::tempdir().unwrap();
        materialise(packs.path(), None).unwrap();
        let dir = app(&[
            ("Procfile", "web: /bin/sh ./run.sh 'quoted'\n"),
            ("app.py", ""),
        ]);
        for pack in builtin_names() {
            assert_eq!(
                release(packs.path(), pack, dir.path()),
                "/bin/sh ./run.sh 'quoted'",
                "{pack}"
            );
        }
    }

    #[test]
    fn default_releases_without_procfile() {
        let packs = tempfile::tempdir().unwrap();
        materialise(packs.path(), None).unwrap();
        let py = app(&[("app.py", "")]);
        assert_eq!(
            release(packs.path(), "python", py.path()),
            ".venv/bin/python app.py"
        );
        let node = app(&[("package.json", r#"{"scripts":{"start":"node s.js"}}"#)]);
        assert_eq!(release(packs.path(), "node", node.path()), "npm start");
        let node_main = app(&[
            ("package.json", r#"{"main":"lib/main.js"}"#),
            ("lib/main.js", ""),
        ]);
        assert_eq!(
            release(packs.path(), "node", node_main.path()),
            "node lib/main.js"
        );
        let site = app(&[("public/index.html", "")]);
        fs::create_dir_all(site.path().join(".strato/bin")).unwrap();
        write_executable(&site.path().join(".strato/bin/strato-static"), b"").unwrap();
        assert_eq!(
            release(packs.path(), "static", site.path()),
            ".strato/bin/strato-static /home/stackato/app/public"
        );
    }

    #[test]
    fn materialise_vendors_the_static_server() {
        let packs = tempfile::tempdir().unwrap();
        let fake = packs.path().join("fake-server");
        fs::write(&fake, b"binary").unwrap();
        materialise(&packs.path().join("bp"), Some(&fake)).unwrap();
        let vendored = packs.path().join("bp").join(STATIC_SERVER_VENDOR_PATH);
        assert_eq!(fs::read(&vendored).unwrap(), b"binary");
        assert!(check_buildpack_dir(&packs.path().join("bp/python")).is_ok());
        assert!(check_buildpack_dir(packs.path()).is_err());
    }

    #[test]
    fn choices_cover_builtins_paths_and_git_urls() {
        let order = default_order();
        assert_eq!(
            choose(None, &order).unwrap(),
            BuildpackChoice::Detect(order.clone())
        );
        assert_eq!(
            choose(Some(" "), &order).unwrap(),
            BuildpackChoice::Detect(order.clone())
        );
        assert_eq!(
            choose(Some("node"), &order).unwrap(),
            BuildpackChoice::Builtin("node".into())
        );
        assert_eq!(
            choose(Some("https://example.com/bp.git#v2"), &order).unwrap(),
            BuildpackChoice::Git {
                url: "https://example.com/bp.git".into(),
                branch: Some("v2".into())
            }
        );
        assert_eq!(
            choose(Some("file:///srv/bp"), &order).unwrap(),
            BuildpackChoice::Git {
                url: "file:///srv/bp".into(),
                branch: None
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().to_str().unwrap();
        assert_eq!(
            choose(Some(local), &order).unwrap(),
            BuildpackChoice::Local(dir.path().to_path_buf())
        );
        let err = choose(Some("cobol"), &order).unwrap_err().to_string();
        assert!(err.contains("python, node, static, procfile"), "{err}");
    }

    #[tokio::test]
    async fn clones_a_local_git_buildpack() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        materialise(&dir.path().join("packs"), None).unwrap();
        let git = |args: &[&str]| {
            let st = Command::new("git")
                .args(args)
                .current_dir(&repo)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@t")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@t")
                .status()
                .unwrap();
            assert!(st.success(), "git {args:?}");
        };
        fs::create_dir_all(&repo).unwrap();
        fs::rename(dir.path().join("packs/procfile/bin"), repo.join("bin")).unwrap();
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "bp"]);
        let url = format!("file://{}", repo.display());
        let dest = dir.path().join("clone");
        clone(&url, None, &dest).await.unwrap();
        check_buildpack_dir(&dest).unwrap();
        let err = clone("file:///nonexistent/repo", None, &dir.path().join("c2"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/repo"), "{err}");
    }
}
