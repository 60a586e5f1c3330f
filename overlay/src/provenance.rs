//! Provenance: where every resolved value came from (file:line:col and cascade level).
//!
//! `napalmctl clone show NAME --explain` prints a [`Resolved`] value next to its [`Origin`].

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// The cascade level a value was written at (thesis figure 3.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "level", content = "name", rename_all = "lowercase")]
pub enum Level {
    /// Top of the file: applies to every clone.
    Global,
    /// A group, named by its path from the top (`outer/inner` for nested groups).
    Group(String),
    /// A host entry, named by its pattern as written (`clone[01-24]` or `clone07`).
    Host(String),
    /// Computed by the engine (`name`, `index`, an address taken from `address_pool`).
    Computed,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Global => write!(f, "global"),
            Level::Group(g) => write!(f, "group `{g}`"),
            Level::Host(h) => write!(f, "host `{h}`"),
            Level::Computed => write!(f, "computed"),
        }
    }
}

/// A position in a source: file (or a label such as `<api>` for values set from code),
/// 1-based line and column (0 when the value did not come from a file).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Origin {
    /// File path or label of the source.
    pub file: Arc<str>,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub col: usize,
    /// Cascade level.
    pub level: Level,
}

impl Origin {
    /// An origin for a value given through the API rather than read from a file.
    pub fn api(label: &str, level: Level) -> Self {
        Origin {
            file: Arc::from(label),
            line: 0,
            col: 0,
            level,
        }
    }

    /// `file:line:col` (or just the label when there is no position).
    pub fn location(&self) -> String {
        if self.line == 0 {
            self.file.to_string()
        } else {
            format!("{}:{}:{}", self.file, self.line, self.col)
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.location(), self.level)
    }
}

/// A value together with where it was written.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sourced {
    /// The value, as JSON (what templates see).
    pub value: serde_json::Value,
    /// Where it was written.
    pub origin: Origin,
}

/// A value after the cascade: the winning value, its origin, and the origins it overrode
/// (outermost first), so users see why a value is what it is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resolved {
    /// The winning value.
    pub value: serde_json::Value,
    /// Where the winning value was written.
    pub origin: Origin,
    /// Values this one overrode, outermost level first.
    pub overridden: Vec<Sourced>,
}

/// One line of `napalmctl clone show NAME --explain`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    /// The key as written in clones.conf (`ip`, `ssh_port`).
    pub key: String,
    /// Final value, rendered as compact JSON.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
    /// What it overrode.
    pub overridden: Vec<Origin>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}    # {}", self.key, self.value, self.origin)?;
        for o in &self.overridden {
            write!(f, "; overrides {}", o)?;
        }
        Ok(())
    }
}
