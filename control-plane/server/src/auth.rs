//! The bearer token shared by the REST API and the discovery server (`--token-file`).

use std::path::Path;

use crate::error::Error;

/// A bearer token; `Debug` never shows it.
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// Reads the token from `path` (surrounding whitespace ignored; must not be empty).
    pub fn load(path: &Path) -> Result<Token, Error> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Token { path: path.into(), reason: e.to_string() })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(Error::Token { path: path.into(), reason: "the file is empty".into() });
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::Token { path: path.into(), reason: "the token has whitespace inside".into() });
        }
        Ok(Token(token.to_string()))
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`. Compares in time
    /// independent of where the first difference is.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(value) = authorization else { return false };
        let Some((scheme, given)) = value.split_once(' ') else { return false };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let (a, b) = (given.trim().as_bytes(), self.0.as_bytes());
        let diff = a.iter().zip(b).fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
        diff == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_exact_bearer_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let t = Token::load(&path).unwrap();
        assert!(t.accepts(Some("Bearer s3cret")));
        assert!(t.accepts(Some("bearer s3cret")));
        assert!(!t.accepts(Some("Bearer s3cre")));
        assert!(!t.accepts(Some("Bearer s3cret2")));
        assert!(!t.accepts(Some("Basic s3cret")));
        assert!(!t.accepts(None));
        assert_eq!(format!("{t:?}"), "Token(…)");
    }

    #[test]
    fn empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, " \n").unwrap();
        assert!(Token::load(&path).unwrap_err().to_string().contains("empty"));
    }
}
