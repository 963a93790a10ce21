//! Multi-document YAML in and out, the way `kubectl` reads it: documents split on `---`
//! lines, each parsed on its own so that an error names the document and the line of the
//! file where it is. Documents come back as JSON values (the Kubernetes object model); the
//! output is YAML with the same meaning (comments and key order do not survive).

use serde_json::Value;

/// One document of a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// 1-based position in the file, counting empty documents.
    pub index: usize,
    /// 1-based line of the file where the document's text starts.
    pub line: usize,
    /// `None` for an empty document (only comments or nothing).
    pub value: Option<Value>,
}

/// Why a file cannot be read: names the document and the line of the file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("document {index} (line {line}): {reason}")]
pub struct YamlError {
    pub index: usize,
    pub line: usize,
    pub reason: String,
}

/// A document's text and where it starts.
struct Chunk<'a> {
    line: usize,
    text: &'a str,
}

/// Splits on document markers: a line that is `---` (or starts `--- `), and `...` (end of
/// document). YAML forbids both at the start of a line inside a document, so a split never
/// falls inside a value.
fn split(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0; // byte offset of the current chunk
    let mut start_line = 1;
    let mut offset = 0;
    let mut explicit_end = false;
    for (line_no, line) in (1..).zip(text.split_inclusive('\n')) {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        let end = bare == "..." || bare.starts_with("... ");
        if marker {
            if offset > start || explicit_end {
                chunks.push(Chunk { line: start_line, text: &text[start..offset] });
            }
            explicit_end = false;
            // Content after `--- ` on the same line belongs to the new document.
            start = offset + 3;
            start_line = line_no;
        } else if end {
            chunks.push(Chunk { line: start_line, text: &text[start..offset] });
            start = offset + line.len();
            start_line = line_no + 1;
            explicit_end = true;
        }
        offset += line.len();
    }
    if offset > start && !text[start..].trim().is_empty() || chunks.is_empty() {
        chunks.push(Chunk { line: start_line, text: &text[start..] });
    }
    chunks
}

/// Reads every document of `text`.
pub fn parse(text: &str) -> Result<Vec<Document>, YamlError> {
    let mut docs = Vec::new();
    for (i, chunk) in split(text).into_iter().enumerate() {
        let index = i + 1;
        let blank = chunk.text.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#')
        });
        if blank {
            docs.push(Document { index, line: chunk.line, value: None });
            continue;
        }
        let value: Value = serde_saphyr::from_str(chunk.text).map_err(|e| {
            let at = e.location().map(|l| l.line() as usize);
            // The parser counts lines from the chunk's start, which is the marker's line.
            let line = at.map_or(chunk.line, |l| chunk.line + l.saturating_sub(1));
            YamlError { index, line, reason: first_line(&e.to_string()) }
        })?;
        let value = (!value.is_null()).then_some(value);
        docs.push(Document { index, line: chunk.line, value });
    }
    Ok(docs)
}

/// The parser's message without its source excerpt and its own (chunk-relative) position.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message).trim();
    let line = line.strip_prefix("error:").unwrap_or(line).trim_start();
    let reason = match line.strip_prefix("line ").and_then(|rest| rest.split_once(": ")) {
        Some((position, reason)) if position.split(' ').next().is_some_and(|n| n.parse::<u64>().is_ok()) => reason,
        _ => line,
    };
    // The parser's advice to its own API user is no use to ours.
    reason.split(", set DuplicateKeyPolicy").next().unwrap_or(reason).to_owned()
}

/// Documents back to multi-document YAML (`---` between them; empty ones dropped).
pub fn to_yaml<'a>(values: impl IntoIterator<Item = &'a Value>) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for value in values {
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(value)?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_split_on_markers_with_their_lines() {
        let text = "# a comment\na: 1\n---\nb: 2\n--- {c: 3}\n---\n# nothing\n...\nd: [4]\n";
        let docs = parse(text).unwrap();
        let got: Vec<(usize, usize, Option<Value>)> = docs.into_iter().map(|d| (d.index, d.line, d.value)).collect();
        assert_eq!(
            got,
            vec![
                (1, 1, Some(json!({"a": 1}))),
                (2, 3, Some(json!({"b": 2}))),
                (3, 5, Some(json!({"c": 3}))),
                (4, 6, None),
                (5, 9, Some(json!({"d": [4]}))),
            ]
        );
    }

    #[test]
    fn a_marker_inside_a_block_scalar_is_not_a_split() {
        // Indented: part of the value.
        let docs = parse("a: |\n  x\n  ---\n  y\n").unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].value, Some(json!({"a": "x\n---\ny\n"})));
    }

    #[test]
    fn an_error_names_the_document_and_the_line_of_the_file() {
        let text = "a: 1\n---\nb: 2\nc: [unclosed\nd: 4\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.index, 2, "{e}");
        assert!((4..=6).contains(&e.line), "{e}");
        assert!(e.to_string().starts_with("document 2 (line "), "{e}");
        assert!(!e.reason.contains("line"), "only the file's line is given: {e}");
    }

    #[test]
    fn output_reads_back_to_the_same_values() {
        let values = vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "true", "b": "0123", "c": "x\ny\n", "d": "null", "e": ""}}),
            json!({"n": 1.5, "list": [1, "2", null, false], "empty": {}, "none": []}),
        ];
        let yaml = to_yaml(&values).unwrap();
        let back: Vec<Value> = parse(&yaml).unwrap().into_iter().filter_map(|d| d.value).collect();
        assert_eq!(back, values, "{yaml}");
    }
}
