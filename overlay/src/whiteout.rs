//! The portable whiteout convention (OCI/AUFS), which plain NFS, tar and cpio copies carry:
//! an empty file `.wh.NAME` removes `NAME` from the layers below; an empty file `.wh..wh..opq`
//! in a directory makes that directory opaque (nothing below shows through). The thesis's
//! UnionFS spelling `.wh.__dir_opaque` (and `.wh._dir_opaque`, as printed in listing 3.6) is
//! accepted on input; output always uses `.wh..wh..opq`. Conversion to overlayfs form
//! (0/0 character devices, `trusted.overlay.opaque`) happens at boot, in the initramfs.

/// Prefix of a whiteout marker.
pub const PREFIX: &str = ".wh.";
/// The opaque-directory marker written on output.
pub const OPAQUE: &str = ".wh..wh..opq";
/// Opaque markers accepted on input.
pub const OPAQUE_INPUT: [&str; 3] = [OPAQUE, ".wh.__dir_opaque", ".wh._dir_opaque"];

/// What a file name means under the convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker<'a> {
    /// An ordinary name.
    None,
    /// The directory holding this marker is opaque.
    Opaque,
    /// The named sibling is removed.
    Whiteout(&'a str),
}

/// Classify a file name (one path component).
pub fn classify(name: &str) -> Result<Marker<'_>, String> {
    if OPAQUE_INPUT.contains(&name) {
        return Ok(Marker::Opaque);
    }
    match name.strip_prefix(PREFIX) {
        None => Ok(Marker::None),
        Some("") | Some(".") | Some("..") => Err(format!(
            "`{name}` is not a valid whiteout: write `.wh.NAME` to remove NAME or `{OPAQUE}` for an opaque directory"
        )),
        Some(rest) if rest.starts_with(PREFIX) => Err(format!(
            "`{name}` is an unknown special whiteout; only `{OPAQUE}` is defined"
        )),
        Some(rest) => Ok(Marker::Whiteout(rest)),
    }
}

/// The marker file name that removes `name`.
pub fn marker_for(name: &str) -> String {
    format!("{PREFIX}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify("hosts").unwrap(), Marker::None);
        assert_eq!(classify(".wh.hosts").unwrap(), Marker::Whiteout("hosts"));
        assert_eq!(classify(".wh..wh..opq").unwrap(), Marker::Opaque);
        assert_eq!(classify(".wh.__dir_opaque").unwrap(), Marker::Opaque);
        assert_eq!(classify(".wh._dir_opaque").unwrap(), Marker::Opaque);
        assert!(classify(".wh.").is_err());
        assert!(classify(".wh..wh.foo").is_err());
        assert_eq!(marker_for("x"), ".wh.x");
    }
}
