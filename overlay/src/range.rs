//! Host ranges (`clone[01-24]`, `node[1-3,7]`) and hostname validation.

/// Why a host pattern or name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

/// Expand a host pattern. A pattern holds at most one `[...]` group of comma-separated numbers
/// or `a-b` ranges; the width of the first bound sets zero padding (`[01-24]` → `01`…`24`,
/// `[1-24]` → `1`…`24`). Refuses more than `max` names. Every produced name is checked with
/// [`check_hostname`].
pub fn expand(pattern: &str, max: usize) -> Result<Vec<String>, PatternError> {
    let Some(open) = pattern.find('[') else {
        check_hostname(pattern)?;
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find(']')
        .map(|c| c + open)
        .ok_or_else(|| PatternError(format!("`{pattern}` opens `[` without closing `]`")))?;
    let (prefix, spec, suffix) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    if suffix.contains('[') || suffix.contains(']') || prefix.contains(']') {
        return Err(PatternError(format!(
            "`{pattern}` has more than one `[...]` group; write one range per entry"
        )));
    }
    let mut out = Vec::new();
    for item in spec.split(',') {
        let item = item.trim();
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        let parse = |s: &str| {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) || s.len() > 9 {
                Err(PatternError(format!(
                    "`{pattern}`: `{item}` is not a number or `first-last` range (e.g. `clone[01-24]`)"
                )))
            } else {
                s.parse::<u64>()
                    .map_err(|_| PatternError(format!("`{pattern}`: bad number `{s}`")))
            }
        };
        let (lo, hi) = (parse(a)?, parse(b)?);
        if lo > hi {
            return Err(PatternError(format!(
                "`{pattern}`: range `{item}` runs backwards; write `{b}-{a}`"
            )));
        }
        let width = if a.len() > 1 && a.starts_with('0') || a.len() == b.len() {
            a.len()
        } else {
            0
        };
        if (hi - lo) as usize >= max.saturating_sub(out.len()) {
            return Err(PatternError(format!(
                "`{pattern}` expands to more than {max} hosts"
            )));
        }
        for n in lo..=hi {
            let name = format!("{prefix}{n:0width$}{suffix}");
            check_hostname(&name)?;
            out.push(name);
        }
    }
    Ok(out)
}

/// Check a hostname (RFC 1123): dot-separated labels of 1–63 ASCII letters, digits and `-`,
/// not starting or ending with `-`, at most 253 characters in all.
pub fn check_hostname(name: &str) -> Result<(), PatternError> {
    let bad = |why: &str| {
        Err(PatternError(format!(
            "`{name}` is not a valid hostname: {why} (use letters, digits and `-`, e.g. `clone07`)"
        )))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 253 {
        return bad("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("it has an empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with `-`");
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return bad(&format!("it contains `{c}`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_range() {
        let v = expand("clone[01-24]", 1000).unwrap();
        assert_eq!(v.len(), 24);
        assert_eq!(v[0], "clone01");
        assert_eq!(v[23], "clone24");
    }

    #[test]
    fn lists_and_unpadded() {
        assert_eq!(
            expand("n[1-3,7,10]x", 100).unwrap(),
            ["n1x", "n2x", "n3x", "n7x", "n10x"]
        );
        assert_eq!(expand("n[008-010]", 100).unwrap(), ["n008", "n009", "n010"]);
    }

    #[test]
    fn refusals() {
        assert!(expand("n[5-1]", 100).is_err());
        assert!(expand("n[1-", 100).is_err());
        assert!(expand("n[a-b]", 100).is_err());
        assert!(expand("n[1-2][1-2]", 100).is_err());
        assert!(expand("n[1-999999999]", 100_000).is_err());
        assert!(expand("bad_name", 10).is_err());
        assert!(expand("-x", 10).is_err());
        assert!(check_hostname(&"a".repeat(64)).is_err());
        assert!(check_hostname("node-1.example").is_ok());
    }
}
