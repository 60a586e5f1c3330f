//! What `dbus-send --print-reply` prints, read back into values. dbus-send (package
//! dbus-bin) prints a header line (`method return time=… sender=… -> destination=…`), then
//! each argument of the reply on its own lines, nested containers indented:
//!
//! ```text
//!    boolean true
//!    string "OK"
//!    struct {
//!       uint64 1796127217
//!       uint64 261322158
//!    }
//!    array [
//!       struct {
//!          uint16 7
//!          string "NFSv40"
//!       }
//!    ]
//! ```
//!
//! Strings are printed raw between double quotes, newlines included (ganesha's
//! `GetFastOPS` sends `"\nNFSv4:"`), so a string ends at the first `"` that ends a line.
//! Only the types ganesha's statistics use are read; anything else is an error naming it.

/// One argument of a reply, or one member of a container.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `boolean true|false`
    Bool(bool),
    /// `string "…"`, `object path "…"`, `signature "…"`
    Str(String),
    /// `byte`, `uint16`, `uint32`, `uint64`
    UInt(u64),
    /// `int16`, `int32`, `int64`
    Int(i64),
    /// `double`
    Double(f64),
    /// `struct { … }` and `dict entry( … )`: members in order.
    Struct(Vec<Value>),
    /// `array [ … ]`
    Array(Vec<Value>),
}

impl Value {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The unsigned number, if this is one.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::UInt(n) => Some(*n),
            _ => None,
        }
    }

    /// The members, if this is a struct or an array.
    pub fn members(&self) -> Option<&[Value]> {
        match self {
            Value::Struct(v) | Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// Why a reply could not be read: what was expected and where (byte offset in the text).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what} at byte {at} of the reply")]
pub struct ParseError {
    /// What the parser expected or found.
    pub what: String,
    /// Byte offset in the printed reply.
    pub at: usize,
}

/// The arguments of a reply `dbus-send --print-reply` printed (header line included).
pub fn parse(text: &str) -> Result<Vec<Value>, ParseError> {
    // The header is the first line; a reply with no arguments has nothing after it.
    let body_at = match text.find('\n') {
        Some(i) if text.starts_with("method return") => i + 1,
        _ => {
            return Err(ParseError {
                what: "no `method return` header line".into(),
                at: 0,
            })
        }
    };
    let mut p = Parser { text, at: body_at };
    let mut out = Vec::new();
    loop {
        p.skip_space();
        if p.at >= text.len() {
            return Ok(out);
        }
        out.push(p.value()?);
    }
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn err<T>(&self, what: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            what: what.into(),
            at: self.at,
        })
    }

    /// The next whitespace-delimited word, consumed.
    fn word(&mut self) -> &'a str {
        self.skip_space();
        let rest = &self.text[self.at..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        self.at += end;
        &rest[..end]
    }

    /// Consumes `token` after optional whitespace, or fails naming it.
    fn expect(&mut self, token: &str) -> Result<(), ParseError> {
        self.skip_space();
        if self.rest().starts_with(token) {
            self.at += token.len();
            Ok(())
        } else {
            self.err(format!("expected `{token}`"))
        }
    }

    /// A quoted string: from the opening `"` to the first `"` that ends a line.
    fn quoted(&mut self) -> Result<String, ParseError> {
        self.expect("\"")?;
        let rest = self.rest();
        let mut from = 0;
        while let Some(i) = rest[from..].find('"') {
            let end = from + i;
            let after = &rest[end + 1..];
            if after.is_empty() || after.starts_with('\n') {
                self.at += end + 1;
                return Ok(rest[..end].to_owned());
            }
            from = end + 1;
        }
        self.err("an unterminated string")
    }

    /// Members up to the closing `close`.
    fn members(&mut self, close: char) -> Result<Vec<Value>, ParseError> {
        let mut v = Vec::new();
        loop {
            self.skip_space();
            if self.rest().starts_with(close) {
                self.at += close.len_utf8();
                return Ok(v);
            }
            if self.rest().is_empty() {
                return self.err(format!("no closing `{close}`"));
            }
            v.push(self.value()?);
        }
    }

    fn number<T: std::str::FromStr>(&mut self, ty: &str) -> Result<T, ParseError> {
        let at = self.at;
        let w = self.word().to_owned();
        w.parse().map_err(|_| ParseError {
            what: format!("`{w}` is not a {ty}"),
            at,
        })
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        let at = self.at;
        let ty = self.word().to_owned();
        match ty.as_str() {
            "boolean" => match self.word() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                other => {
                    let other = other.to_owned();
                    self.err(format!("`{other}` is not a boolean"))
                }
            },
            "string" | "signature" => Ok(Value::Str(self.quoted()?)),
            "object" => {
                self.expect("path")?;
                Ok(Value::Str(self.quoted()?))
            }
            "byte" | "uint16" | "uint32" | "uint64" => Ok(Value::UInt(self.number(&ty)?)),
            "int16" | "int32" | "int64" => Ok(Value::Int(self.number(&ty)?)),
            "double" => Ok(Value::Double(self.number(&ty)?)),
            "variant" => self.value(),
            "struct" => {
                self.expect("{")?;
                Ok(Value::Struct(self.members('}')?))
            }
            "array" => {
                self.expect("[")?;
                Ok(Value::Array(self.members(']')?))
            }
            // `dict entry(`: the word read is `dict`, then `entry(`.
            "dict" => {
                self.expect("entry(")?;
                Ok(Value::Struct(self.members(')')?))
            }
            other => Err(ParseError {
                what: format!("unknown type `{other}`"),
                at,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ganesha 4.3's answer to GetFastOPS after one file was read over NFSv4.0, as
    /// dbus-send 1.14 printed it (shortened).
    const FAST_OPS: &str = "method return time=1796127222.015905 sender=:1.0 -> destination=:1.7 serial=13 reply_serial=2
   boolean true
   string \"OK\"
   struct {
      uint64 1796127217
      uint64 261322158
   }
   struct {
      string \"NFSv3:\"
      string \"
NFSv4:\"
      string \"GETATTR\"
      uint64 3
      string \"READ\"
      uint64 1
      string \"
NLM:\"
   }
";

    #[test]
    fn reads_strings_with_newlines_and_nested_structs() {
        let v = parse(FAST_OPS).expect("parses");
        assert_eq!(v.len(), 4);
        assert_eq!(v[0], Value::Bool(true));
        assert_eq!(v[1].as_str(), Some("OK"));
        assert_eq!(
            v[2],
            Value::Struct(vec![Value::UInt(1796127217), Value::UInt(261322158)])
        );
        let ops = v[3].members().expect("a struct");
        assert_eq!(ops[1].as_str(), Some("\nNFSv4:"));
        assert_eq!(ops[2].as_str(), Some("GETATTR"));
        assert_eq!(ops[3].as_u64(), Some(3));
        assert_eq!(ops[6].as_str(), Some("\nNLM:"));
        assert_eq!(ops.len(), 7);
    }

    #[test]
    fn reads_arrays_dicts_and_other_scalars() {
        let text = "method return time=1 sender=:1.0 -> destination=:1.1 serial=2 reply_serial=1
   array [
      dict entry(
         string \"a \"quoted\" word\"
         variant             int32 -4
      )
   ]
   array [
   ]
   double 0.25
   object path \"/org/ganesha/nfsd/ExportMgr\"
";
        let v = parse(text).expect("parses");
        assert_eq!(
            v,
            vec![
                Value::Array(vec![Value::Struct(vec![
                    Value::Str("a \"quoted\" word".into()),
                    Value::Int(-4)
                ])]),
                Value::Array(vec![]),
                Value::Double(0.25),
                Value::Str("/org/ganesha/nfsd/ExportMgr".into()),
            ]
        );
    }

    #[test]
    fn says_what_it_could_not_read() {
        let e = parse("Error org.freedesktop.DBus.Error.ServiceUnknown: no").unwrap_err();
        assert!(e.what.contains("method return"), "{e}");
        let e = parse("method return x\n   struct {\n      uint64 1\n").unwrap_err();
        assert!(e.what.contains("no closing `}`"), "{e}");
        let e = parse("method return x\n   uint64 -1\n").unwrap_err();
        assert!(e.what.contains("`-1` is not a uint64"), "{e}");
        let e = parse("method return x\n   unix_fd 3\n").unwrap_err();
        assert!(e.what.contains("unknown type `unix_fd`"), "{e}");
    }
}
