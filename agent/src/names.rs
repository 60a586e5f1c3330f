//! Validation of names that become paths: domain names and file names inside a domain.

use std::path::{Component, Path, PathBuf};

use crate::error::{AgentError, Result};

/// Names under `/domain/NAME/` that are the agent's own resources, never domain files.
pub const RESERVED_FILES: &[&str] = &[
    "config.xml",
    "status.xml",
    "status.json",
    "archive.tar.gz",
    "console",
];

/// The domain name rule, shared by the agent and its clients: 1–64 characters of
/// `[A-Za-z0-9._-]`, not starting with `.` or `-` — so a name is one path segment that
/// never climbs (`..`) or hides (`.x`), and never reads as a flag (`-x`).
pub fn is_domain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.')
        && !name.starts_with('-')
}

/// Checks a domain name with [`is_domain_name`]; the error quotes it and states the rule.
pub fn check_domain_name(name: &str) -> Result<()> {
    if is_domain_name(name) {
        Ok(())
    } else {
        Err(AgentError::invalid(
            "name",
            format!("{name:?} is not a domain name: use 1-64 characters of A-Z a-z 0-9 . _ - not starting with . or -"),
        ))
    }
}

/// Checks a path relative to a domain directory: no absolute path, no `..`, no `.`-only
/// or empty components, at most 8 levels and 255 bytes. Returns it normalised.
pub fn check_relative(field: &str, raw: &str) -> Result<PathBuf> {
    let p = Path::new(raw);
    if raw.is_empty() || raw.len() > 255 {
        return Err(AgentError::invalid(
            field,
            format!("path {raw:?} is empty or longer than 255 bytes"),
        ));
    }
    if raw.contains('\0') || raw.contains('\\') {
        return Err(AgentError::Policy(format!(
            "path {raw:?} contains a NUL or backslash"
        )));
    }
    let mut out = PathBuf::new();
    let mut depth = 0;
    for c in p.components() {
        match c {
            Component::Normal(s) => {
                out.push(s);
                depth += 1;
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(AgentError::Policy(format!(
                    "absolute path {raw:?}: only paths inside the domain directory are allowed"
                )))
            }
            Component::ParentDir => {
                return Err(AgentError::Policy(format!(
                    "path {raw:?} climbs out with '..': only paths inside the domain directory are allowed"
                )))
            }
        }
    }
    if depth == 0 || depth > 8 {
        return Err(AgentError::invalid(
            field,
            format!("path {raw:?} must have 1 to 8 components"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_domain_name("clone01").is_ok());
        assert!(check_domain_name("a.b_c-d").is_ok());
        for bad in ["", "..", ".x", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_domain_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            check_relative("f", "./disks/a.img").ok(),
            Some(PathBuf::from("disks/a.img"))
        );
        for bad in ["/etc/shadow", "../x", "a/../../x", "", ".", "a\\b"] {
            assert!(check_relative("f", bad).is_err(), "{bad}");
        }
    }
}
