//! Text → [`Bootstrap`]. YAML and JSON go through one path (YAML is read into a JSON value,
//! then deserialized with the failing field's path recorded), so both give the same errors.

use crate::Bootstrap;
use thiserror::Error;

/// Why a config text could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not YAML/JSON at all.
    #[error("not valid YAML or JSON: {0}")]
    Syntax(String),
    /// Well-formed, but a field is unknown, missing or of the wrong type.
    #[error("{path}: {reason}")]
    Field { path: String, reason: String },
}

/// Parses a bootstrap (YAML or JSON) without validating references between resources.
pub fn parse_bootstrap(text: &str) -> Result<Bootstrap, ParseError> {
    parse(text)
}

/// Parses any resource type from YAML or JSON text, naming the field path in errors.
pub fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    // JSON first when it looks like JSON (its errors are clearer); YAML flow mappings
    // (`{ a: 1 }`) also start with `{`, so fall back to YAML.
    let json = text.trim_start().starts_with('{').then(|| serde_json::from_str(text).ok()).flatten();
    let value: serde_json::Value = match json {
        Some(v) => v,
        None => serde_saphyr::from_str(text).map_err(|e| ParseError::Syntax(e.to_string()))?,
    };
    // An empty YAML document is an empty config, not a type error.
    let value = if value.is_null() { serde_json::Value::Object(Default::default()) } else { value };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ParseError::Field {
            path: if path == "." { "(top level)".into() } else { path },
            reason: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_agree() {
        let yaml = "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    routes: [r]\n";
        let json = r#"{"listeners":[{"name":"a","address":"127.0.0.1:1","routes":["r"]}]}"#;
        assert_eq!(parse_bootstrap(yaml), parse_bootstrap(json));
    }

    #[test]
    fn unknown_field_names_its_path() {
        let yaml = "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    rutes: [r]\n";
        match parse_bootstrap(yaml) {
            Err(ParseError::Field { path, reason }) => {
                assert_eq!(path, "listeners[0].rutes");
                assert!(reason.contains("unknown field `rutes`"), "{reason}");
            }
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn bad_duration_names_its_path() {
        let yaml = "routes:\n  - name: r\n    backends: [{cluster: c}]\n    timeout: 5\n";
        match parse_bootstrap(yaml) {
            Err(ParseError::Field { path, reason }) => {
                assert_eq!(path, "routes[0].timeout");
                assert!(reason.contains("no unit"), "{reason}");
            }
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn syntax_error_is_reported() {
        assert!(matches!(parse_bootstrap("listeners: [\n"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn empty_text_is_empty_config() {
        assert_eq!(parse_bootstrap(""), Ok(Bootstrap::default()));
    }
}
