//! What a domain XML may ask of this host. Every host path in the XML must resolve inside
//! the domain's own directory (relative names are rewritten to absolute paths there);
//! host devices (`<hostdev>`, block disks, `<source dev>`), hypervisor pass-through
//! (`qemu:commandline` and any other namespaced element), network interfaces and graphics
//! are refused unless the operator's [`Policy`] allows them. The agent adds its own
//! `<metadata>` (so it recognises its domains) and refuses one sent by a client, and it
//! keeps the guest's console: the first `<serial>` (else the first `<console>`) gets a
//! `<log file=… append='off'/>` naming a file of the agent's own in the domain directory
//! (a `<log>` the client put there is replaced), so what a guest printed while booting can
//! be read back (`Agent::console`).
//!
//! An interface may name one of libvirt's anti-spoofing network filters
//! ([`ALLOWED_NWFILTERS`], e.g. `clean-traffic` binding it to its MAC and IP) in
//! `<filterref>`; any other filter could be one the host defines to let traffic through,
//! so it is refused.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};
use crate::names;

mod console;

pub use console::console_log_of;
use console::{console_device, console_log_edit};

/// XML namespace of the agent's metadata element.
pub const NAPALM_NS: &str = "https://napalm.invalid/ns/agent/1";

/// The libvirt network filters an `<interface>`'s `<filterref>` may name: the stock
/// filters that only take traffic away from the guest (spoofed MAC, IP or ARP).
pub const ALLOWED_NWFILTERS: &[&str] = &[
    "clean-traffic",
    "clean-traffic-gateway",
    "no-ip-spoofing",
    "no-mac-spoofing",
    "no-arp-spoofing",
    "no-arp-ip-spoofing",
    "no-arp-mac-spoofing",
];

/// Operator allow-list. The default refuses everything that reaches past the domain.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Allow `<hostdev>` / `<redirdev>` / `<smartcard>` pass-through.
    pub allow_hostdev: bool,
    /// Allow disks of type `block` (host block devices).
    pub allow_block_disks: bool,
    /// `<interface type=...>` values allowed (empty: no interfaces at all).
    pub allow_interfaces: Vec<String>,
    /// Allow `<graphics>` devices.
    pub allow_graphics: bool,
    /// `<emulator>` paths allowed (usually the emulators of the host's capabilities).
    pub allowed_emulators: Vec<String>,
}

/// A domain XML that passed the policy.
#[derive(Debug, Clone)]
pub struct CheckedConfig {
    /// `<name>`.
    pub name: String,
    /// The XML handed to libvirt: absolute paths, plus the agent's metadata.
    pub libvirt_xml: String,
    /// Files the XML references, relative to the domain directory.
    pub files: Vec<String>,
    /// vCPUs asked for.
    pub vcpus: u32,
    /// Memory asked for, bytes.
    pub memory_bytes: u64,
}

/// Parses XML from a client: no DTD, bounded node count; errors name line and column.
pub fn parse<'a>(field: &str, xml: &'a str) -> Result<roxmltree::Document<'a>> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: 100_000,
    };
    roxmltree::Document::parse_with_options(xml, opts)
        .map_err(|e| AgentError::invalid(field, format!("malformed XML: {e}")))
}

/// `s` escaped for XML text and attribute values.
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

struct Walk<'p> {
    dir: &'p Path,
    canon_dir: PathBuf,
    policy: &'p Policy,
    edits: Vec<(Range<usize>, String)>,
    files: Vec<String>,
    /// The character device whose `<log>` the agent writes (its own is not checked: it
    /// is replaced).
    console_dev: Option<roxmltree::NodeId>,
}

impl Walk<'_> {
    /// Checks one host path and records its rewrite to an absolute path in the directory.
    fn path(&mut self, what: &str, raw: &str, range: Range<usize>) -> Result<()> {
        let raw = raw.trim();
        let rel = match Path::new(raw).strip_prefix(self.dir) {
            Ok(inside) if raw.starts_with('/') => {
                names::check_relative(what, &inside.to_string_lossy())?
            }
            _ => names::check_relative(what, raw).map_err(|e| match e {
                AgentError::Policy(_) => AgentError::Policy(format!(
                    "{what} {raw:?} is outside the domain directory; name files relative to it"
                )),
                other => other,
            })?,
        };
        let full = self.dir.join(&rel);
        // Symlinks (which the agent never creates) must not lead out either.
        let mut probe = full.clone();
        while !probe.exists() {
            if !probe.pop() {
                break;
            }
        }
        if let Ok(c) = probe.canonicalize() {
            if !c.starts_with(&self.canon_dir) {
                return Err(AgentError::Policy(format!(
                    "{what} {raw:?} resolves outside the domain directory"
                )));
            }
        }
        let rel = rel.to_string_lossy().into_owned();
        if !self.files.contains(&rel) {
            self.files.push(rel);
        }
        self.edits.push((range, escape(&full.to_string_lossy())));
        Ok(())
    }

    fn element(&mut self, n: roxmltree::Node<'_, '_>) -> Result<()> {
        let tag = n.tag_name().name();
        if tag == "log"
            && self.console_dev.is_some()
            && n.parent_element().map(|p| p.id()) == self.console_dev
        {
            // Replaced by the agent's console log (see `console_log_edit`).
            return Ok(());
        }
        if n.tag_name().namespace().is_some() {
            return Err(AgentError::Policy(format!(
                "element <{}> in namespace {:?} (hypervisor pass-through such as qemu:commandline) is not allowed",
                tag,
                n.tag_name().namespace().unwrap_or_default()
            )));
        }
        let attr = |a: &str| n.attribute(a).unwrap_or_default();
        let parent = n
            .parent_element()
            .map(|p| p.tag_name().name())
            .unwrap_or_default();
        // libvirt concatenates all text of these elements: a comment or processing
        // instruction splitting the text would let a checked prefix carry an unchecked tail.
        if matches!(
            tag,
            "kernel" | "initrd" | "loader" | "dtb" | "nvram" | "emulator" | "backend"
        ) && (n.children().count() > 1 || n.children().any(|c| !c.is_text()))
        {
            return Err(AgentError::Policy(format!(
                "<{tag}> must hold plain text only (no comments or nested nodes)"
            )));
        }
        match tag {
            "metadata" => {
                return Err(AgentError::Policy(
                    "<metadata> is written by the agent; remove it from config.xml".into(),
                ))
            }
            "hostdev" | "redirdev" | "smartcard" if !self.policy.allow_hostdev => {
                return Err(AgentError::Policy(format!(
                    "<{tag}> passes a host device to the guest"
                )))
            }
            "seclabel" => {
                return Err(AgentError::Policy(
                    "<seclabel> would change the guest's confinement".into(),
                ))
            }
            "disk" => {
                let t = attr("type");
                let ok =
                    matches!(t, "file" | "") || (t == "block" && self.policy.allow_block_disks);
                if !ok {
                    return Err(AgentError::Policy(format!("<disk type={t:?}>: only file disks inside the domain directory are allowed (block disks of the host are refused)")));
                }
                if attr("device") == "lun" {
                    return Err(AgentError::Policy(
                        "<disk device='lun'> passes a host SCSI device".into(),
                    ));
                }
            }
            "interface"
                if !self
                    .policy
                    .allow_interfaces
                    .iter()
                    .any(|a| a == attr("type")) =>
            {
                return Err(AgentError::Policy(format!(
                    "<interface type={:?}> is not allowed on this agent (allowed: {:?})",
                    attr("type"),
                    self.policy.allow_interfaces
                )))
            }
            "filterref" if parent != "interface" => {
                return Err(AgentError::Policy(format!(
                    "<filterref> in <{parent}>: network filters apply to an <interface> only"
                )))
            }
            "filterref" if !ALLOWED_NWFILTERS.contains(&attr("filter")) => {
                return Err(AgentError::Policy(format!(
                    "<filterref filter={:?}> is not an allowed network filter (allowed: {})",
                    attr("filter"),
                    ALLOWED_NWFILTERS.join(", ")
                )))
            }
            // An option ROM file is read by QEMU from the host: only turning the ROM off
            // (or on) is accepted, never naming a file.
            "rom" if !attr("file").is_empty() => {
                return Err(AgentError::Policy(format!(
                    "<rom file={:?}> would make QEMU read a host file as an option ROM; \
                     use <rom bar='off'/> or leave <rom> out",
                    attr("file")
                )))
            }
            "graphics" if !self.policy.allow_graphics => {
                return Err(AgentError::Policy(
                    "<graphics> is not allowed on this agent".into(),
                ))
            }
            "serial" | "console" | "parallel" | "channel" => {
                let t = attr("type");
                if !matches!(t, "pty" | "file" | "null" | "unix" | "") {
                    return Err(AgentError::Policy(format!("<{tag} type={t:?}>: only pty, file, null and unix character devices are allowed")));
                }
            }
            "filesystem" => {
                let t = attr("type");
                if !matches!(t, "mount" | "") {
                    return Err(AgentError::Policy(format!("<filesystem type={t:?}>: only directories inside the domain directory can be shared")));
                }
            }
            "emulator" => {
                let e = n.text().unwrap_or_default().trim();
                if !self.policy.allowed_emulators.iter().any(|a| a == e) {
                    return Err(AgentError::Policy(format!(
                        "<emulator> {e:?} is not one of this host's emulators {:?}",
                        self.policy.allowed_emulators
                    )));
                }
            }
            // An image format with a header (qcow2, vmdk...) can name a backing file anywhere
            // on the host, which QEMU would open: only raw images are accepted.
            "driver" | "format" if matches!(parent, "disk" | "backingStore") => {
                let t = attr("type");
                if !matches!(t, "" | "raw") {
                    return Err(AgentError::Policy(format!(
                        "<{tag} type={t:?}> in <{parent}>: only raw disk images are accepted (image headers can name host files as backing stores)"
                    )));
                }
            }
            "table" if parent == "acpi" => {
                if let Some(t) = n.first_child().filter(|c| c.is_text()) {
                    let raw = t.text().unwrap_or_default().to_owned();
                    self.path("<acpi><table>", &raw, t.range())?;
                }
            }
            "kernel" | "initrd" | "loader" | "dtb" | "nvram" if parent == "os" => {
                if let Some(t) = n.first_child().filter(|c| c.is_text()) {
                    let raw = t.text().unwrap_or_default().to_owned();
                    if !raw.trim().is_empty() {
                        self.path(&format!("<{tag}>"), &raw, t.range())?;
                    }
                }
            }
            "backend" if parent == "rng" => {
                let t = n.text().unwrap_or_default().trim();
                if attr("model") == "random" && !matches!(t, "/dev/urandom" | "/dev/random" | "") {
                    return Err(AgentError::Policy(format!(
                        "rng backend {t:?} is a host device other than /dev/urandom"
                    )));
                }
            }
            _ => {}
        }
        for a in n.attributes() {
            let name = a.name();
            let path_attr = matches!(name, "file" | "path" | "socket" | "template")
                || (tag == "source" && name == "dir");
            if tag == "source"
                && matches!(name, "dev" | "pool" | "volume" | "protocol" | "evdev")
                && parent != "interface"
            {
                return Err(AgentError::Policy(format!(
                    "<source {name}={:?}> in <{parent}> reaches a host device or storage pool",
                    a.value()
                )));
            }
            if path_attr && tag != "target" {
                self.path(&format!("<{tag} {name}=...>"), a.value(), a.range_value())?;
            }
        }
        Ok(())
    }
}

/// Checks `xml` for the domain whose files live in `dir`, and prepares what libvirt gets.
/// `metadata` is the agent's own element (already serialised) added under `<metadata>`;
/// `console_log`, when given, is the file the guest's console is kept in (outside `dir`,
/// so no client file can be it).
pub fn check(
    xml: &str,
    dir: &Path,
    policy: &Policy,
    metadata: &str,
    console_log: Option<&Path>,
) -> Result<CheckedConfig> {
    let doc = parse("config.xml", xml)?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" || root.tag_name().namespace().is_some() {
        return Err(AgentError::invalid(
            "config.xml",
            format!(
                "root element is <{}>, expected a libvirt <domain>",
                root.tag_name().name()
            ),
        ));
    }
    let child_text = |tag: &str| {
        root.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .map(|t| t.trim().to_owned())
    };
    let name =
        child_text("name").ok_or_else(|| AgentError::invalid("config.xml", "no <name> element"))?;
    names::check_domain_name(&name)?;
    let canon_dir = dir.canonicalize().map_err(|e| AgentError::io(dir, e))?;
    let console_dev = console_log.and_then(|_| console_device(root));
    let mut walk = Walk {
        dir,
        canon_dir,
        policy,
        edits: Vec::new(),
        files: Vec::new(),
        console_dev: console_dev.map(|d| d.id()),
    };
    for n in root.descendants().filter(|n| n.is_element()) {
        walk.element(n)?;
    }
    if let (Some(dev), Some(log)) = (console_dev, console_log) {
        walk.edits.push(console_log_edit(xml, dev, log));
    }
    let vcpus = child_text("vcpu").and_then(|v| v.parse().ok()).unwrap_or(1);
    let memory_bytes = root
        .children()
        .find(|c| c.has_tag_name("memory"))
        .map(|m| {
            let v: u64 = m.text().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
            v.saturating_mul(unit_bytes(m.attribute("unit").unwrap_or("KiB")))
        })
        .unwrap_or(0);
    // Apply rewrites back to front so earlier ranges stay valid.
    let mut out = xml.to_owned();
    let end = root.range().end;
    let close = out[..end]
        .rfind("</")
        .ok_or_else(|| AgentError::invalid("config.xml", "<domain> has no content"))?;
    out.insert_str(close, &format!("<metadata>{metadata}</metadata>"));
    let out = apply_edits(&out, walk.edits);
    Ok(CheckedConfig {
        name,
        libvirt_xml: out,
        files: walk.files,
        vcpus,
        memory_bytes,
    })
}

fn unit_bytes(unit: &str) -> u64 {
    match unit {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => 1024,
    }
}

/// Adds `<uuid>` to a checked libvirt XML that has none, so a redefinition updates the
/// same domain instead of clashing with it.
pub fn with_uuid(libvirt_xml: &str, uuid: &str) -> String {
    let Ok(doc) = roxmltree::Document::parse(libvirt_xml) else {
        return libvirt_xml.to_owned();
    };
    let root = doc.root_element();
    if uuid.is_empty() || root.children().any(|c| c.has_tag_name("uuid")) {
        return libvirt_xml.to_owned();
    }
    let end = root.range().end;
    let mut out = libvirt_xml.to_owned();
    if let Some(close) = out[..end].rfind("</") {
        out.insert_str(close, &format!("<uuid>{}</uuid>", escape(uuid)));
    }
    out
}

/// The agent's metadata element for a domain.
pub fn metadata_element(agent_id: &str) -> String {
    format!(
        "<napalm:agent xmlns:napalm=\"{NAPALM_NS}\" id=\"{}\"/>",
        escape(agent_id)
    )
}

/// The agent id in a libvirt domain XML's napalm metadata, if any.
pub fn owner_of(libvirt_xml: &str) -> Option<String> {
    napalm_attribute(libvirt_xml, "agent", "id")
}

/// Attribute `attribute` of the first napalm metadata element `element` in a domain XML.
pub(crate) fn napalm_attribute(xml: &str, element: &str, attribute: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    doc.descendants()
        .find(|n| n.tag_name().namespace() == Some(NAPALM_NS) && n.tag_name().name() == element)
        .and_then(|n| n.attribute(attribute).map(str::to_owned))
}

/// `xml` with each range of `edits` (none overlapping) replaced by its text, applied back
/// to front so the earlier ranges stay valid.
pub(crate) fn apply_edits(xml: &str, mut edits: Vec<(Range<usize>, String)>) -> String {
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = xml.to_owned();
    for (r, v) in edits {
        out.replace_range(r, &v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(devices: &str) -> Result<CheckedConfig> {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = dir.path().join("files");
        std::fs::create_dir(&files).expect("files");
        let xml =
            format!("<domain type='test'><name>d</name><devices>{devices}</devices></domain>");
        let log = dir.path().join("console.log");
        check(&xml, &files, &Policy::default(), "<x/>", Some(&log)).map(|mut c| {
            // Paths are the temporary directory's: name them by what they are.
            c.libvirt_xml = c
                .libvirt_xml
                .replace(&log.to_string_lossy().into_owned(), "LOG")
                .replace(&files.to_string_lossy().into_owned(), "FILES");
            c
        })
    }

    fn checked_with_interfaces(devices: &str) -> Result<CheckedConfig> {
        let dir = tempfile::tempdir().expect("tempdir");
        let xml =
            format!("<domain type='qemu'><name>d</name><devices>{devices}</devices></domain>");
        let policy = Policy {
            allow_interfaces: vec!["network".into()],
            ..Policy::default()
        };
        check(&xml, dir.path(), &policy, "<x/>", None)
    }

    #[test]
    fn an_interface_may_name_only_anti_spoofing_network_filters() {
        let iface = |filter: &str| {
            format!(
                "<interface type='network'><source network='n'/><mac address='52:54:00:00:00:01'/>\
                 <filterref filter='{filter}'><parameter name='IP' value='10.0.0.5'/></filterref>\
                 </interface>"
            )
        };
        for f in ["clean-traffic", "no-ip-spoofing", "no-mac-spoofing"] {
            let c = checked_with_interfaces(&iface(f)).expect(f);
            assert!(
                c.libvirt_xml.contains(&format!("<filterref filter='{f}'>")),
                "{}",
                c.libvirt_xml
            );
        }
        for f in ["allow-ipv4", "my-open-filter", ""] {
            let e = checked_with_interfaces(&iface(f)).expect_err(f);
            let msg = e.to_string();
            assert!(
                msg.contains("not an allowed network filter") && msg.contains("clean-traffic"),
                "{f}: {msg}"
            );
        }
        // Only inside an interface.
        let e = checked_with_interfaces("<filterref filter='clean-traffic'/>").expect_err("bare");
        assert!(e.to_string().contains("<interface> only"), "{e}");
    }

    #[test]
    fn an_option_rom_may_be_turned_off_but_never_read_from_a_host_file() {
        // The ROM is vetted wherever it stands (here a video device's).
        let off = "<video><rom bar='off'/></video>";
        assert!(checked(off).is_ok(), "{:?}", checked(off).err());
        let file = "<video><rom file='/etc/shadow'/></video>";
        let e = checked(file).expect_err("a host file as ROM");
        assert!(e.to_string().contains("/etc/shadow"), "{e}");
    }

    #[test]
    fn the_first_serial_logs_the_console_to_the_agents_file() {
        let c = checked("<serial type='pty'><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>").expect("ok");
        assert!(
            c.libvirt_xml.contains(
                "<serial type='pty'><target port='0'/><log file=\"LOG\" append=\"off\"/></serial><console type='pty'>"
            ),
            "{}",
            c.libvirt_xml
        );
        assert_eq!(console_log_of(&c.libvirt_xml), Some(PathBuf::from("LOG")));
        // A self-closing serial is opened for it.
        let c = checked("<serial type='pty'/>").expect("ok");
        assert!(
            c.libvirt_xml
                .contains("<serial type='pty'><log file=\"LOG\" append=\"off\"/></serial>"),
            "{}",
            c.libvirt_xml
        );
        // Without a serial, the console device carries it (Xen PV).
        let c = checked("<console type='pty'><target type='xen' port='0'/></console>").expect("ok");
        assert_eq!(console_log_of(&c.libvirt_xml), Some(PathBuf::from("LOG")));
        // No character device: nothing is kept.
        let c = checked("<memballoon model='none'/>").expect("ok");
        assert_eq!(console_log_of(&c.libvirt_xml), None);
    }

    #[test]
    fn a_clients_console_log_is_replaced_and_other_logs_stay_confined() {
        // The console device's own <log> may name anything: it is replaced, not followed.
        let c = checked(
            "<serial type='pty'><log file='/etc/shadow' append='on'/><target port='0'/></serial>",
        )
        .expect("replaced");
        assert!(!c.libvirt_xml.contains("/etc/shadow"), "{}", c.libvirt_xml);
        assert!(
            c.libvirt_xml
                .contains("<serial type='pty'><log file=\"LOG\" append=\"off\"/><target"),
            "{}",
            c.libvirt_xml
        );
        // A second serial's <log> is a host path like any other.
        let e =
            checked("<serial type='pty'/><serial type='pty'><log file='/etc/shadow'/></serial>")
                .expect_err("outside the domain directory");
        assert!(
            e.to_string().contains("outside the domain directory"),
            "{e}"
        );
        let c = checked("<serial type='pty'/><serial type='pty'><log file='second.log'/></serial>")
            .expect("inside");
        assert!(
            c.libvirt_xml.contains("<log file='FILES/second.log'/>"),
            "{}",
            c.libvirt_xml
        );
    }
}
