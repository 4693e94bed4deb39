//! Where manifest values come from: each file's name and text, so errors and warnings can
//! point at a line and column (`stackato.yml:4:3: ...`) even for values whose type is wrong
//! after parsing, by finding the key's line in the text.

use std::fmt;
use std::sync::Arc;

/// One manifest file as read.
#[derive(Debug)]
pub struct SourceFile {
    /// The name shown to the user (the path as given).
    pub name: String,
    pub text: String,
}

/// A span of lines (0-based, end exclusive) of a file where one app's keys are.
#[derive(Clone, Debug)]
pub struct Region {
    pub file: Arc<SourceFile>,
    pub first_line: usize,
    pub end_line: usize,
}

impl Region {
    /// The whole file.
    pub fn whole(file: Arc<SourceFile>) -> Region {
        let end_line = file.text.lines().count();
        Region {
            file,
            first_line: 0,
            end_line,
        }
    }

    /// Line and column (1-based) of the key path `keys` (each found after the previous
    /// one), or of the start of the region when a key is not found.
    pub fn locate(&self, keys: &[&str]) -> (usize, usize) {
        let lines: Vec<&str> = self.file.text.lines().collect();
        let mut at = (self.first_line + 1, 1);
        let mut from = self.first_line;
        for key in keys {
            match (from..self.end_line.min(lines.len()))
                .find_map(|i| key_column(lines[i], key).map(|c| (i, c)))
            {
                Some((line, col)) => {
                    at = (line + 1, col + 1);
                    from = line + 1;
                }
                None => break,
            }
        }
        at
    }

    /// Line and column (1-based) of the first occurrence of `needle` in the region.
    pub fn find_text(&self, needle: &str) -> Option<(usize, usize)> {
        self.file
            .text
            .lines()
            .enumerate()
            .skip(self.first_line)
            .take(self.end_line.saturating_sub(self.first_line))
            .find_map(|(i, line)| line.find(needle).map(|c| (i + 1, c + 1)))
    }

    /// An error at the key path `keys`.
    pub fn error_at(&self, keys: &[&str], message: impl Into<String>, hint: &str) -> ManifestError {
        let (line, column) = self.locate(keys);
        self.error_at_position(line, column, message, hint)
    }

    pub fn error_at_position(
        &self,
        line: usize,
        column: usize,
        message: impl Into<String>,
        hint: &str,
    ) -> ManifestError {
        ManifestError {
            file: self.file.name.clone(),
            line,
            column,
            message: message.into(),
            hint: hint.to_string(),
        }
    }
}

/// The column (0-based) where `key:` starts on `line`, allowing list dashes and quotes.
fn key_column(line: &str, key: &str) -> Option<usize> {
    let mut rest = line;
    let mut offset = 0;
    loop {
        let trimmed = rest.trim_start();
        offset += rest.len() - trimmed.len();
        rest = trimmed;
        match rest.strip_prefix("- ") {
            Some(after) => {
                offset += 2;
                rest = after;
            }
            None => break,
        }
    }
    for quote in ["", "\"", "'"] {
        let quoted = format!("{quote}{key}{quote}");
        if let Some(after) = rest.strip_prefix(&quoted) {
            if after.trim_start().starts_with(':') {
                return Some(offset);
            }
        }
    }
    None
}

/// A manifest problem at a place in a file, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if !self.hint.is_empty() {
            write!(f, " (hint: {})", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

/// The start lines (0-based) of the items of the top-level `applications:` list, and the
/// line after the list.
pub fn application_blocks(text: &str) -> (Vec<usize>, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.starts_with("applications:")) else {
        return (vec![], lines.len());
    };
    let mut items = Vec::new();
    let mut indent: Option<usize> = None;
    let mut end = lines.len();
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let this_indent = line.len() - trimmed.len();
        if this_indent == 0 && !trimmed.starts_with('-') {
            end = i;
            break;
        }
        if trimmed.starts_with('-') && indent.is_none_or(|n| n == this_indent) {
            indent = Some(this_indent);
            items.push(i);
        }
    }
    (items, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(text: &str) -> Region {
        Region::whole(Arc::new(SourceFile {
            name: "stackato.yml".into(),
            text: text.into(),
        }))
    }

    #[test]
    fn keys_are_found_through_dashes_and_nesting() {
        let r = region("name: a\nenv:\n  FOO: 1\n  \"BAR\": {prompt: x}\n- mem: 5\n");
        assert_eq!(r.locate(&["env", "BAR"]), (4, 3));
        assert_eq!(r.locate(&["mem"]), (5, 3));
        assert_eq!(r.locate(&["nothing"]), (1, 1));
        assert_eq!(r.find_text("{prompt"), Some((4, 10)));
    }

    #[test]
    fn application_items_are_split() {
        let text = "inherit: x\napplications:\n- name: a\n  mem: 1\n# c\n- name: b\n  env:\n    - x\nproperties:\n  k: v\n";
        assert_eq!(application_blocks(text), (vec![2, 5], 8));
    }
}
