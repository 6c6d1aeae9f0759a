//! Bearer tokens: read from a flag, a DROVER_* variable or a file, compared
//! in constant time, and attached to every call a client makes.
//!
//! A token travels as `authorization: Bearer <token>` metadata. The master
//! decides what a token may do (its roles live in `drover-master`); this
//! module only holds the secret and moves it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The metadata key a token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// The longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// A secret token. It never shows in `Debug` output or logs, and is only
/// ever compared in constant time.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Checks a token's text: surrounding whitespace is dropped (a file
    /// usually ends in a newline); what is left must be 1 to 4096 visible
    /// ASCII characters, so that it fits in a header as it is. `what` names
    /// the source in the error (a flag, a file).
    pub fn new(text: &str, what: &str) -> Result<Token, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err(format!("{what}: the token is empty"));
        }
        if t.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "{what}: the token has {} bytes, over the limit of {MAX_TOKEN_BYTES}",
                t.len()
            ));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{what}: the token may hold only visible ASCII characters (no spaces)"
            ));
        }
        Ok(Token(Arc::from(t)))
    }

    /// Reads a token from a value or a file, whichever was given; `flag` is
    /// the value's flag (the file's is `flag` with `-file`), for messages.
    pub fn from_sources(
        value: Option<&str>,
        file: Option<&Path>,
        flag: &str,
    ) -> Result<Option<Token>, String> {
        match (value, file) {
            (Some(_), Some(_)) => Err(format!("give {flag} or {flag}-file, not both")),
            (Some(v), None) => Token::new(v, flag).map(Some),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{flag}-file: cannot read {}: {e}", path.display()))?;
                Token::new(&text, &format!("{flag}-file {}", path.display())).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    /// Whether `presented` is this token, in time that does not depend on
    /// where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        ct_eq(self.0.as_bytes(), presented)
    }

    /// The token's text, to send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Compares two byte strings in constant time (for equal lengths: a token's
/// length is not the secret, its bytes are).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// What a request's `authorization` metadata holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No `authorization` metadata.
    Missing,
    /// Metadata that is not `Bearer <token>`.
    Malformed,
    /// A bearer token.
    Bearer(&'a [u8]),
}

/// Reads the bearer token of a request's metadata.
pub fn presented(metadata: &MetadataMap) -> Presented<'_> {
    let Some(value) = metadata.get(AUTHORIZATION) else {
        return Presented::Missing;
    };
    let bytes = value.as_bytes();
    // The scheme is case-insensitive (RFC 9110).
    match bytes.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => {
            let token = bytes[7..].trim_ascii();
            if token.is_empty() {
                Presented::Malformed
            } else {
                Presented::Bearer(token)
            }
        }
        _ => Presented::Malformed,
    }
}

/// A client interceptor that sends the token, if there is one, with every
/// call.
#[derive(Clone, Default)]
pub struct AttachToken(Option<MetadataValue<Ascii>>);

impl fmt::Debug for AttachToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "AttachToken(<redacted>)"
        } else {
            "AttachToken(none)"
        })
    }
}

impl AttachToken {
    /// Sends `token` (or nothing) with every call.
    pub fn new(token: Option<&Token>) -> AttachToken {
        AttachToken(token.map(|t| {
            let mut v: MetadataValue<Ascii> = format!("Bearer {}", t.expose())
                .parse()
                .expect("a checked token is a valid header value");
            v.set_sensitive(true);
            v
        }))
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_trimmed() {
        assert_eq!(
            Token::new(" s3cret\n", "--token").unwrap().expose(),
            "s3cret"
        );
        assert!(Token::new("  \n", "--token").unwrap_err().contains("empty"));
        assert!(
            Token::new("a b", "--token")
                .unwrap_err()
                .contains("visible")
        );
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert!(Token::new(&long, "--token").unwrap_err().contains("4096"));
        assert!(!format!("{:?}", Token::new("s3cret", "t").unwrap()).contains("s3cret"));
    }

    #[test]
    fn tokens_come_from_a_value_or_a_file() {
        let dir = std::env::temp_dir().join(format!("drover-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let t = Token::from_sources(None, Some(&file), "--token").unwrap();
        assert_eq!(t.unwrap().expose(), "from-file");
        assert!(
            Token::from_sources(Some("a"), Some(&file), "--token")
                .unwrap_err()
                .contains("not both")
        );
        let missing = dir.join("missing");
        let e = Token::from_sources(None, Some(&missing), "--token").unwrap_err();
        assert!(e.contains("--token-file") && e.contains("missing"), "{e}");
        assert!(
            Token::from_sources(None, None, "--token")
                .unwrap()
                .is_none()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compares_and_reads_bearer_metadata() {
        let t = Token::new("abc", "t").unwrap();
        assert!(t.matches(b"abc"));
        assert!(!t.matches(b"abd"));
        assert!(!t.matches(b"ab"));
        let mut req = Request::new(());
        assert_eq!(presented(req.metadata()), Presented::Missing);
        AttachToken::new(Some(&t)).call(Request::new(())).unwrap();
        req = AttachToken::new(Some(&t)).call(req).unwrap();
        assert_eq!(presented(req.metadata()), Presented::Bearer(b"abc"));
        req.metadata_mut()
            .insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(presented(req.metadata()), Presented::Malformed);
        req.metadata_mut()
            .insert(AUTHORIZATION, "bearer  xyz ".parse().unwrap());
        assert_eq!(presented(req.metadata()), Presented::Bearer(b"xyz"));
    }
}
