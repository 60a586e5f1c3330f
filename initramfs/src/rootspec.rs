//! The `root=` grammar of the thesis (listing 2.2, EBNF ISO/IEC 14977):
//!
//! ```text
//! Syntaxe        = "root=" Dispositif { ";" Dispositif } [ ";" ] ;
//! Dispositif     = TypeDispositif { Params } ;
//! Params         = ":" Option ;
//! Option         = Symbole { Symbole } ;
//! TypeDispositif = ( "/" | lettre ) { Symbole } ;
//! Symbole        = lettre | chiffre | "_" | "." | "+" | "/" ;
//! ```
//!
//! Two readings the thesis's own examples force on the letter of the grammar:
//! an `Option` may be empty (`nfs:10.0.0.1::ro`, section 2.2.2.1: empty dir = `/`), and an
//! option may hold any printable character but `;` and `:` (`ro,nolock` in annex II,
//! `/dev/md0,/dev/md1` in section 3.2.2). A type starting with `/` is a block device
//! (`root=/dev/sda1` means `root=block:/dev/sda1`, section 3.2.3); so are `LABEL=` and `UUID=`
//! (which also may take `-` in a device path). One extension: a type may start with a
//! digit, for the `9p` fsloader. Composed types (`loop+nfs`, `lvm2+md`) keep
//! their full name; [`Device::components`] splits them.

use thiserror::Error;

/// A parsed `root=` value: the layers of the union, leftmost first (the rightmost wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSpec {
    /// The devices in command-line order.
    pub devices: Vec<Device>,
}

/// The role a device plays in the union.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A read-only lower layer.
    Ro,
    /// The writable upper layer (at most one).
    Rw,
}

/// One `Dispositif`: an fsloader name and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The fsloader name (`nfs`, `loop+nfs`, `block` for a `/…` device).
    pub kind: String,
    /// The parameters after the type, `:`-separated, possibly empty strings.
    pub params: Vec<String>,
    /// Byte offset of this device in the `root=` value.
    pub offset: usize,
}

/// Why a `root=` value was rejected; `Display` quotes the input and points at the position.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("root={input}: {what} at position {position}\n  root={input}\n  {caret:>width$}", caret = "^", width = position + 6)]
pub struct RootParseError {
    /// The whole `root=` value.
    pub input: String,
    /// Byte offset (0-based) of the offending character in the value.
    pub position: usize,
    /// What is wrong there.
    pub what: String,
}

impl Device {
    /// The parts of a composed type: `loop+nfs` gives `["loop", "nfs"]` (thesis 3.2.2).
    pub fn components(&self) -> Vec<&str> {
        self.kind.split('+').collect()
    }

    /// The role from the last parameter (`ro`/`rw`); `tmpfs` defaults to rw, others to ro.
    pub fn role(&self) -> Role {
        match self.params.last().map(String::as_str) {
            Some("rw") => Role::Rw,
            Some("ro") => Role::Ro,
            _ if self.kind == "tmpfs" => Role::Rw,
            _ => Role::Ro,
        }
    }

    /// The parameters without a trailing role (`ro`/`rw`).
    pub fn args(&self) -> &[String] {
        match self.params.last().map(String::as_str) {
            Some("rw") | Some("ro") => &self.params[..self.params.len() - 1],
            _ => &self.params,
        }
    }

    /// The device written back in `root=` syntax (`nfs:10.0.0.1::ro`); same as `to_string`.
    pub fn display(&self) -> String {
        self.to_string()
    }

    /// A device of fsloader type `kind` with `params` (a role is a last `ro`/`rw`, see
    /// [`Device::with_role`]), checked against the grammar: the error quotes the device
    /// and points at the character that would not read back (`;`, `:` or a space in a
    /// parameter, a type that is not a name).
    pub fn new<S: Into<String>>(
        kind: impl Into<String>,
        params: impl IntoIterator<Item = S>,
    ) -> Result<Device, RootParseError> {
        let dev = Device {
            kind: kind.into(),
            params: params.into_iter().map(Into::into).collect(),
            offset: 0,
        };
        let text = dev.to_string();
        let err = |position: usize, what: String| RootParseError {
            input: text.clone(),
            position,
            what,
        };
        let back = RootSpec::parse_device(&text, 0, &err)?;
        if back.kind != dev.kind || back.params != dev.params {
            return Err(err(
                0,
                format!(
                    "device would read back as {back}, not as type {:?}",
                    dev.kind
                ),
            ));
        }
        Ok(dev)
    }

    /// A block device (`/dev/vda`, `LABEL=root`, `UUID=…`), its filesystem detected.
    pub fn block(device: &str) -> Result<Device, RootParseError> {
        Device::new("block", [device])
    }

    /// An NFSv4 export `server:dir` (an empty `dir` means `/`).
    pub fn nfs(server: &str, dir: &str) -> Result<Device, RootParseError> {
        Device::new("nfs", [server, dir])
    }

    /// A tmpfs (the default upper layer).
    pub fn tmpfs() -> Device {
        Device {
            kind: "tmpfs".into(),
            params: Vec::new(),
            offset: 0,
        }
    }

    /// An image file on an earlier layer.
    pub fn loop_file(path: &str) -> Result<Device, RootParseError> {
        Device::new("loop", [path])
    }

    /// An image (or a directory of images) on an NFS server.
    pub fn loop_nfs(server: &str, path: &str) -> Result<Device, RootParseError> {
        Device::new("loop+nfs", [server, path])
    }

    /// A segment `name` appended to the initramfs (`napalm-mkinitramfs --append-layer`).
    pub fn layer(name: &str) -> Result<Device, RootParseError> {
        Device::new("layer", [name])
    }

    /// This device with role `role`: replaces a trailing `ro`/`rw`, else appends one.
    pub fn with_role(mut self, role: Role) -> Device {
        if matches!(self.params.last().map(String::as_str), Some("ro" | "rw")) {
            self.params.pop();
        }
        self.params.push(role.to_string());
        self
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Ro => "ro",
            Role::Rw => "rw",
        })
    }
}

/// `root=` syntax of one device: `type{:param}` (a `/dev/…` device as `block:/dev/…`).
impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.kind)?;
        for p in &self.params {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// The `root=` value (without `root=`): devices joined by `;`. It parses back to an equal
/// value when the spec was built with [`RootSpec::new`].
impl std::fmt::Display for RootSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, d) in self.devices.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

fn is_symbol(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '/')
}

fn is_option_char(c: char) -> bool {
    // `|` was the separator of an earlier draft (thesis listing 2.3); reject it loudly.
    c.is_ascii_graphic() && !matches!(c, ';' | ':' | '|')
}

impl RootSpec {
    /// The union of `devices`, leftmost first; their offsets are set to where each starts
    /// in the displayed value, so the spec equals its own parse. At least one device.
    pub fn new(devices: impl IntoIterator<Item = Device>) -> Result<RootSpec, RootParseError> {
        let mut devices: Vec<Device> = devices.into_iter().collect();
        if devices.is_empty() {
            return Err(RootParseError {
                input: String::new(),
                position: 0,
                what: "a root= needs at least one device".into(),
            });
        }
        let mut offset = 0;
        for d in &mut devices {
            d.offset = offset;
            offset += d.to_string().len() + 1;
        }
        Ok(RootSpec { devices })
    }

    /// Parses a `root=` value (without the `root=` prefix).
    pub fn parse(input: &str) -> Result<RootSpec, RootParseError> {
        let err = |position: usize, what: String| RootParseError {
            input: input.to_string(),
            position,
            what,
        };
        if input.is_empty() {
            return Err(err(
                0,
                "empty root=, expected at least one device such as `tmpfs:rw` or `/dev/vda`".into(),
            ));
        }
        let mut devices = Vec::new();
        let mut start = 0usize;
        let segments: Vec<&str> = input.split(';').collect();
        for (i, seg) in segments.iter().enumerate() {
            let is_last = i + 1 == segments.len();
            if seg.is_empty() {
                // `[ ";" ]`: one trailing separator is allowed, nothing else may be empty.
                if is_last && i > 0 {
                    break;
                }
                return Err(err(
                    start,
                    "empty device (two `;` in a row or a leading `;`)".into(),
                ));
            }
            devices.push(Self::parse_device(seg, start, &err)?);
            start += seg.len() + 1;
        }
        Ok(RootSpec { devices })
    }

    fn parse_device(
        seg: &str,
        offset: usize,
        err: &dyn Fn(usize, String) -> RootParseError,
    ) -> Result<Device, RootParseError> {
        let mut parts = seg.split(':');
        let ty = parts.next().unwrap_or_default();
        let mut params: Vec<String> = Vec::new();
        let mut pos = offset + ty.len() + 1;
        for p in parts {
            if let Some((j, c)) = p.char_indices().find(|&(_, c)| !is_option_char(c)) {
                let hint = if c == '|' {
                    " (separate devices with `;`)"
                } else {
                    ""
                };
                return Err(err(
                    pos + j,
                    format!("character {c:?} is not allowed in a parameter{hint}"),
                ));
            }
            params.push(p.to_string());
            pos += p.len() + 1;
        }
        let first = match ty.chars().next() {
            Some(c) => c,
            None => return Err(err(offset, "device type missing before `:`".into())),
        };
        // `/…`, `LABEL=…`, `UUID=…` are block devices (thesis 3.2.3).
        let block_alias = first == '/' || ty.starts_with("LABEL=") || ty.starts_with("UUID=");
        if block_alias {
            if let Some((j, c)) = ty.char_indices().find(|&(_, c)| !is_option_char(c)) {
                return Err(err(
                    offset + j,
                    format!("character {c:?} is not allowed in a device path"),
                ));
            }
            let mut all = vec![ty.to_string()];
            all.extend(params);
            return Ok(Device {
                kind: "block".into(),
                params: all,
                offset,
            });
        }
        if !first.is_ascii_alphanumeric() {
            return Err(err(
                offset,
                format!("device type must start with a letter or `/`, found {first:?}"),
            ));
        }
        if let Some((j, c)) = ty.char_indices().find(|&(_, c)| !is_symbol(c)) {
            return Err(err(
                offset + j,
                format!("character {c:?} is not allowed in device type {ty:?}"),
            ));
        }
        if ty.split('+').any(str::is_empty) {
            return Err(err(
                offset,
                format!("composed type {ty:?} has an empty part around `+`"),
            ));
        }
        Ok(Device {
            kind: ty.to_string(),
            params,
            offset,
        })
    }

    /// Index of the writable upper layer, if any; more than one is an error.
    pub fn upper(&self) -> Result<Option<usize>, String> {
        let rw: Vec<usize> = (0..self.devices.len())
            .filter(|&i| self.devices[i].role() == Role::Rw)
            .collect();
        match rw.as_slice() {
            [] => Ok(None),
            [one] if *one + 1 == self.devices.len() => Ok(Some(*one)),
            [one] => Err(format!(
                "the rw layer {} must be the rightmost device (it is the union's upper layer)",
                self.devices[*one].display()
            )),
            _ => Err(format!(
                "at most one rw layer is allowed, found {}",
                rw.iter()
                    .map(|&i| self.devices[i].display())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

#[cfg(test)]
#[path = "rootspec_tests.rs"]
mod tests;
