//! RELIABILITY.md, one section per scenario: each command rewrites its own section (between
//! `<!-- NAME:begin -->` and `<!-- NAME:end -->`) and leaves the others as they are; and how
//! the sections' tables write a duration or an epoch.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// RELIABILITY.md at the repository root.
#[must_use]
pub fn default_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../RELIABILITY.md")
}

/// `text` with the section `name` replaced by `body`, or appended if it is not there yet.
#[must_use]
pub fn replace_section(text: &str, name: &str, body: &str) -> String {
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let section = format!("{begin}\n{}\n{end}", body.trim_end());
    match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &text[..b], &text[e + end.len()..])
        }
        _ => {
            let mut out = text.trim_end().to_owned();
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(&section);
            out.push('\n');
            out
        }
    }
}

/// Rewrite section `name` of the file at `path` (created if missing).
///
/// # Errors
/// If the file cannot be read or written.
pub fn write_section(path: &Path, name: &str, body: &str) -> std::io::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    std::fs::write(path, replace_section(&text, name, body))
}

/// An epoch for a table: its number, or `-` for none.
#[must_use]
pub fn epoch(e: Option<u64>) -> String {
    e.map_or_else(|| "-".to_owned(), |e| e.to_string())
}

/// A duration in seconds with two decimals.
#[must_use]
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::replace_section;

    #[test]
    fn a_section_is_replaced_in_place_and_a_new_one_appended() {
        let doc = "# R\n\n<!-- a:begin -->\nold a\n<!-- a:end -->\n\ntail\n";
        let doc = replace_section(doc, "a", "new a\n");
        assert_eq!(
            doc,
            "# R\n\n<!-- a:begin -->\nnew a\n<!-- a:end -->\n\ntail\n"
        );
        let doc = replace_section(&doc, "b", "b");
        assert!(
            doc.ends_with("tail\n\n<!-- b:begin -->\nb\n<!-- b:end -->\n"),
            "{doc}"
        );
        assert_eq!(replace_section(&doc, "b", "b"), doc);
    }
}
