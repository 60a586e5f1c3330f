//! Bearer tokens: the one comparison every server of the contract (agent REST and gRPC,
//! coordinator gRPC) makes between the token it expects and the one a caller presents.

use subtle::ConstantTimeEq;

/// Whether `presented` is `expected`, compared in constant time (`subtle`): the time taken
/// does not depend on where the first differing byte is, so a caller cannot guess a
/// token byte by byte from answer times. Only the length may leak.
pub fn token_matches(expected: &str, presented: &str) -> bool {
    expected.as_bytes().ct_eq(presented.as_bytes()).into()
}

/// The token of an `Authorization: Bearer TOKEN` value (HTTP header or gRPC metadata),
/// `None` for another scheme.
pub fn bearer(value: &str) -> Option<&str> {
    value.strip_prefix("Bearer ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_token_matches() {
        assert!(token_matches("s3cret-token", "s3cret-token"));
        for other in ["", "s3cret-toke", "s3cret-token!", "S3cret-token", "x"] {
            assert!(!token_matches("s3cret-token", other), "{other:?}");
        }
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }
}
