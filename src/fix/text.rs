//! What every pure text transform of a guest file returns, and the line/field splitting they
//! share: lines they do not change are copied byte for byte.

use serde::Serialize;

/// One edit made to a guest file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// 1-based line number in the original text.
    pub line: usize,
    /// What the line is about: a mountpoint (`/boot`, `swap`), a crypttab name, a
    /// `/etc/default/grub` key, a menu entry title, a device.map drive.
    pub field: String,
    pub old: String,
    /// The replacement; empty when the line was removed.
    pub new: String,
}

/// The result of a text transform.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Rewrite {
    pub text: String,
    pub changes: Vec<Change>,
    /// Things left alone that may still break the boot on KVM.
    pub warnings: Vec<String>,
}

impl Rewrite {
    /// The warnings, each prefixed with the path of the file they are about.
    pub fn warnings_about<'a>(&'a self, path: &'a str) -> impl Iterator<Item = String> + 'a {
        self.warnings.iter().map(move |w| format!("{path}: {w}"))
    }

    /// The text as it was, with nothing to report.
    pub fn unchanged(text: &str) -> Self {
        Rewrite {
            text: text.to_string(),
            changes: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn is_changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// A line of a text file, split from its terminator so that both can be written back as is.
pub struct Line<'a> {
    /// 1-based.
    pub number: usize,
    pub body: &'a str,
    /// `"\n"`, `"\r\n"` or `""` for a last line without newline.
    pub ending: &'a str,
}

pub fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    text.split_inclusive('\n').enumerate().map(|(i, raw)| {
        let body_len = if raw.ends_with("\r\n") {
            raw.len() - 2
        } else if raw.ends_with('\n') {
            raw.len() - 1
        } else {
            raw.len()
        };
        Line {
            number: i + 1,
            body: &raw[..body_len],
            ending: &raw[body_len..],
        }
    })
}

/// Byte spans of the space/tab separated fields of a table line.
pub fn field_spans(s: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (c == ' ' || c == '\t', start) {
            (true, Some(st)) => {
                spans.push((st, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(st) = start {
        spans.push((st, s.len()));
    }
    spans
}
