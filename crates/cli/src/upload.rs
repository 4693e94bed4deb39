//! Turns an app directory into what `PUT /v2/apps/:guid/bits` takes: the list of files with
//! their SHA1, size and mode (for resource matching), minus ignored ones, and a zip of the
//! files the server does not have yet, keeping unix modes so scripts stay executable.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::collections::HashSet;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Directories never uploaded.
const ALWAYS_SKIPPED: [&str; 3] = [".git", ".hg", ".svn"];

/// Files in the app directory that list patterns to leave out.
pub const IGNORE_FILES: [&str; 2] = [".stratoignore", ".cfignore"];

/// One file to upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppFile {
    /// Path relative to the app directory, `/`-separated.
    pub rel: String,
    pub abs: PathBuf,
    pub size: u64,
    pub sha1: String,
    /// Permission bits, e.g. 0o755.
    pub mode: u32,
}

/// What the walk found.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub files: Vec<AppFile>,
    /// Directories (relative path, mode), parents before children.
    pub dirs: Vec<(String, u32)>,
}

impl Scan {
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// An entry of `PUT /v2/resource_match` and of the `resources` field of the bits upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceEntry {
    #[serde(rename = "fn")]
    pub path: String,
    pub sha1: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl AppFile {
    /// The entry asked about in `resource_match` (no mode).
    pub fn match_entry(&self) -> ResourceEntry {
        ResourceEntry {
            path: self.rel.clone(),
            sha1: self.sha1.clone(),
            size: self.size,
            mode: None,
        }
    }

    /// The entry listed in the upload's `resources` (mode as CF writes it, octal: "755").
    pub fn resource_entry(&self) -> ResourceEntry {
        ResourceEntry {
            mode: Some(format!("{:o}", self.mode)),
            ..self.match_entry()
        }
    }
}

/// One ignore pattern.
#[derive(Clone, Debug)]
struct Pattern {
    glob: Vec<char>,
    /// Matches the whole relative path rather than the name.
    anchored: bool,
    dir_only: bool,
    negated: bool,
}

/// Ignore rules, gitignore-like: `name`, `*.log`, `dir/`, `/top-level-only`, `a/**/b`,
/// `!keep.log`; the last matching pattern decides.
#[derive(Clone, Debug, Default)]
pub struct Ignores {
    patterns: Vec<Pattern>,
}

impl Ignores {
    pub fn new<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> Self {
        Ignores {
            patterns: lines
                .into_iter()
                .filter_map(|l| parse_pattern(l.as_ref()))
                .collect(),
        }
    }

    /// The manifest's `ignores:` plus the ignore files found in `dir`.
    pub fn for_dir(dir: &Path, manifest_ignores: &[String]) -> Result<Self> {
        let mut lines: Vec<String> = manifest_ignores.to_vec();
        for name in IGNORE_FILES {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(text) => lines.extend(text.lines().map(str::to_string)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot read {}", dir.join(name).display()))
                }
            }
        }
        Ok(Self::new(lines))
    }

    /// True when `rel` (relative, `/`-separated) is left out.
    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        if is_dir && ALWAYS_SKIPPED.contains(&name) {
            return true;
        }
        let rel_chars: Vec<char> = rel.chars().collect();
        let name_chars: Vec<char> = name.chars().collect();
        let mut ignored = false;
        for p in &self.patterns {
            if p.dir_only && !is_dir {
                continue;
            }
            let subject = if p.anchored { &rel_chars } else { &name_chars };
            if glob_match(&p.glob, subject) {
                ignored = !p.negated;
            }
        }
        ignored
    }
}

fn parse_pattern(line: &str) -> Option<Pattern> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (negated, line) = match line.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let line = line.strip_prefix("./").unwrap_or(line);
    let dir_only = line.ends_with('/');
    let line = line.trim_end_matches('/');
    let anchored = line.contains('/');
    let line = line.trim_start_matches('/');
    if line.is_empty() {
        return None;
    }
    Some(Pattern {
        glob: line.chars().collect(),
        anchored,
        dir_only,
        negated,
    })
}

/// `*` and `?` stay within one path segment; `**` crosses segments.
fn glob_match(p: &[char], s: &[char]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some('*') if p.get(1) == Some(&'*') => {
            let rest = &p[2..];
            let rest = rest.strip_prefix(&['/']).unwrap_or(rest);
            (0..=s.len()).any(|i| (i == 0 || s[i - 1] == '/') && glob_match(rest, &s[i..]))
        }
        Some('*') => {
            for i in 0..=s.len() {
                if glob_match(&p[1..], &s[i..]) {
                    return true;
                }
                if i < s.len() && s[i] == '/' {
                    return false;
                }
            }
            false
        }
        Some('?') => s.first().is_some_and(|c| *c != '/') && glob_match(&p[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob_match(&p[1..], &s[1..]),
    }
}

/// Walks `root`, leaving out ignored paths, symlinked directories and special files.
pub fn scan(root: &Path, ignores: &Ignores) -> Result<Scan> {
    let mut out = Scan::default();
    walk(root, "", ignores, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, ignores: &Ignores, out: &mut Scan) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read directory {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            eprintln!(
                "warning: skipping {} (its name is not UTF-8)",
                entry.path().display()
            );
            continue;
        };
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let link_meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if link_meta.is_dir() {
            if !ignores.is_ignored(&rel, true) {
                out.dirs
                    .push((rel.clone(), link_meta.permissions().mode() & 0o7777));
                walk(&path, &rel, ignores, out)?;
            }
            continue;
        }
        // Symlinks are uploaded as the file they point to; links to directories are skipped.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() || ignores.is_ignored(&rel, false) {
            continue;
        }
        let sha1 = sha1_file(&path)?;
        out.files.push(AppFile {
            rel,
            abs: path,
            size: meta.len(),
            sha1,
            mode: meta.permissions().mode() & 0o7777,
        });
    }
    Ok(())
}

/// The hex SHA1 of a file's content.
pub fn sha1_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Writes a zip (deflate) of `scan`'s directories and those files not in `matched`
/// (relative paths the server already has).
pub fn write_zip<W: Write + Seek>(scan: &Scan, matched: &HashSet<String>, out: W) -> Result<W> {
    use zip::write::SimpleFileOptions;
    let mut zip = zip::ZipWriter::new(out);
    let base = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (rel, mode) in &scan.dirs {
        zip.add_directory(format!("{rel}/"), base.unix_permissions(*mode))?;
    }
    for file in scan.files.iter().filter(|f| !matched.contains(&f.rel)) {
        let options = base
            .unix_permissions(file.mode)
            .large_file(file.size >= u32::MAX as u64);
        zip.start_file(file.rel.as_str(), options)?;
        let mut src = std::fs::File::open(&file.abs)
            .with_context(|| format!("cannot read {}", file.abs.display()))?;
        std::io::copy(&mut src, &mut zip)
            .with_context(|| format!("cannot zip {}", file.abs.display()))?;
    }
    Ok(zip.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn ignore_patterns() {
        let ig = Ignores::new([
            "*.log",
            "tmp/",
            "/build",
            "docs/*.md",
            "cache/**/x",
            "!keep.log",
            "# comment",
            "",
        ]);
        assert!(ig.is_ignored("a.log", false));
        assert!(ig.is_ignored("deep/er/a.log", false));
        assert!(!ig.is_ignored("keep.log", false));
        assert!(ig.is_ignored("tmp", true));
        assert!(ig.is_ignored("src/tmp", true));
        assert!(
            !ig.is_ignored("tmp", false),
            "tmp/ matches directories only"
        );
        assert!(ig.is_ignored("build", true));
        assert!(!ig.is_ignored("src/build", true), "/build is anchored");
        assert!(ig.is_ignored("docs/a.md", false));
        assert!(
            !ig.is_ignored("docs/sub/a.md", false),
            "* stays in one segment"
        );
        assert!(ig.is_ignored("cache/x", false));
        assert!(ig.is_ignored("cache/a/b/x", false));
        assert!(ig.is_ignored(".git", true));
        assert!(ig.is_ignored("vendor/.git", true));
        assert!(!ig.is_ignored("app.py", false));
        assert!(!Ignores::default().is_ignored("a.log", false));
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn sample_app() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("app.py"), "print('hi')\n", 0o644);
        write(
            &root.join("bin/start"),
            "#!/bin/sh\nexec python app.py\n",
            0o755,
        );
        write(&root.join("debug.log"), "noise", 0o644);
        write(&root.join(".git/HEAD"), "ref: refs/heads/main", 0o644);
        write(&root.join("node_modules/x/index.js"), "1", 0o644);
        write(&root.join(".cfignore"), "node_modules/\n", 0o644);
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::os::unix::fs::symlink(root.join("bin"), root.join("bin-link")).unwrap();
        std::os::unix::fs::symlink("app.py", root.join("main.py")).unwrap();
        dir
    }

    #[test]
    fn scan_skips_ignored_and_hashes_files() {
        let dir = sample_app();
        let ignores = Ignores::for_dir(dir.path(), &["*.log".to_string()]).unwrap();
        let scan = scan(dir.path(), &ignores).unwrap();
        let names: Vec<_> = scan.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(names, vec![".cfignore", "app.py", "bin/start", "main.py"]);
        let dirs: Vec<_> = scan.dirs.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(dirs, vec!["bin", "empty"]);
        let app = &scan.files[1];
        assert_eq!(app.size, 12);
        assert_eq!(app.sha1, hex::encode(Sha1::digest(b"print('hi')\n")));
        assert_eq!(
            scan.files[3].sha1, app.sha1,
            "a symlink uploads its target's content"
        );
        assert_eq!(scan.files[2].resource_entry().mode.as_deref(), Some("755"));
        let json = serde_json::to_value(app.match_entry()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"fn": "app.py", "sha1": app.sha1, "size": 12})
        );
    }

    #[test]
    fn zip_round_trip_keeps_modes_and_leaves_out_matched_files() {
        let dir = sample_app();
        let scan = scan(dir.path(), &Ignores::for_dir(dir.path(), &[]).unwrap()).unwrap();
        let matched: HashSet<String> = ["main.py".to_string()].into();
        let bytes = write_zip(&scan, &matched, Cursor::new(Vec::new()))
            .unwrap()
            .into_inner();
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let mut seen = Vec::new();
        for i in 0..archive.len() {
            let mut entry = archive.by_index(i).unwrap();
            let mode = entry.unix_mode().unwrap() & 0o777;
            let mut content = String::new();
            if !entry.is_dir() {
                entry.read_to_string(&mut content).unwrap();
            }
            seen.push((entry.name().to_string(), mode, content));
        }
        let find = |n: &str| seen.iter().find(|(name, _, _)| name == n).cloned();
        assert_eq!(
            find("bin/start"),
            Some((
                "bin/start".into(),
                0o755,
                "#!/bin/sh\nexec python app.py\n".into()
            ))
        );
        assert_eq!(find("app.py").map(|e| e.1), Some(0o644));
        assert!(
            find("empty/").is_some(),
            "empty directories are kept: {seen:?}"
        );
        assert!(
            find("main.py").is_none(),
            "matched files are not sent again"
        );
        assert!(find("debug.log").is_some());
        assert!(seen
            .iter()
            .all(|(n, _, _)| !n.starts_with(".git/") && !n.starts_with("node_modules")));
    }

    #[test]
    fn empty_zip_is_valid() {
        let bytes = write_zip(&Scan::default(), &HashSet::new(), Cursor::new(Vec::new()))
            .unwrap()
            .into_inner();
        assert_eq!(zip::ZipArchive::new(Cursor::new(bytes)).unwrap().len(), 0);
    }
}
