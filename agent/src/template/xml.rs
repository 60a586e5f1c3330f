//! The XML edits of a start from a template: the template's own domain (a clone's, less
//! what differs clone by clone), its key, and the clone's XML for the restore.

use std::ops::Range;
use std::path::Path;

use sha2::{Digest, Sha256};
use thiserror::Error;

pub use napalm_initramfs::identity::{IDENTITY_FILE, TEMPLATE_ARG};

use crate::policy::{apply_edits, escape as esc, NAPALM_NS};

/// How template guests are named: this, the agent's id (8 characters), `-` and the first
/// 12 hex digits of their key.
pub const TEMPLATE_PREFIX: &str = "napalm-tpl-";
/// The MAC every template's NIC has: a template never sends (napalm-init waits before the
/// network), and each clone sets its own as it resumes (`napalm.mac=`).
pub const TEMPLATE_MAC: &str = "52:54:00:00:00:00";
const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// Why a domain cannot start from a template (it is booted cold instead).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Unsuitable {
    /// Not a QEMU or KVM domain.
    #[error("a {0:?} domain has no QEMU to restore into")]
    NotQemu(String),
    /// Disks: their contents are not in the template, their devices may be.
    #[error("it has disks")]
    Disks,
    /// More than one NIC: napalm-init sets one MAC.
    #[error("it has {0} network interfaces (one at most)")]
    Interfaces(usize),
    /// No direct kernel boot: nothing for napalm-init to run in.
    #[error("it boots no kernel of its own (no <kernel> and <cmdline>)")]
    NoKernel,
    /// The XML did not parse (it passed the policy, so this is unexpected).
    #[error("its XML does not parse: {0}")]
    Xml(String),
}

/// What the edits need from a clone's libvirt XML.
struct Parts {
    name: Range<usize>,
    uuid: Option<Range<usize>>,
    cmdline: Range<usize>,
    cmdline_text: String,
    macs: Vec<(Range<usize>, String)>,
    filterrefs: Vec<Range<usize>>,
    targets: Vec<Range<usize>>,
    logs: Vec<Range<usize>>,
    agent_meta: Option<Range<usize>>,
    domain_open_end: usize,
    domain_close: usize,
}

fn parts(xml: &str) -> Result<Parts, Unsuitable> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| Unsuitable::Xml(e.to_string()))?;
    let root = doc.root_element();
    let dtype = root.attribute("type").unwrap_or_default();
    if !matches!(dtype, "qemu" | "kvm") {
        return Err(Unsuitable::NotQemu(dtype.to_owned()));
    }
    let child = |tag: &str| root.children().find(|c| c.has_tag_name(tag));
    let text_range = |n: roxmltree::Node<'_, '_>| match n.first_child() {
        Some(t) if t.is_text() => t.range(),
        // An empty element: its text goes before the closing tag.
        _ => {
            let r = n.range();
            let close = xml[r.clone()].rfind("</").map_or(r.end, |i| r.start + i);
            close..close
        }
    };
    let name = child("name").ok_or_else(|| Unsuitable::Xml("no <name>".into()))?;
    let os = child("os").ok_or(Unsuitable::NoKernel)?;
    let has = |tag: &str| os.children().find(|c| c.has_tag_name(tag));
    let (Some(_), Some(cmdline)) = (has("kernel"), has("cmdline")) else {
        return Err(Unsuitable::NoKernel);
    };
    let devices: Vec<_> = child("devices")
        .map(|d| d.children().filter(|c| c.is_element()).collect())
        .unwrap_or_default();
    if devices.iter().any(|d| d.has_tag_name("disk")) {
        return Err(Unsuitable::Disks);
    }
    let nics: Vec<_> = devices
        .iter()
        .filter(|d| d.has_tag_name("interface"))
        .collect();
    if nics.len() > 1 {
        return Err(Unsuitable::Interfaces(nics.len()));
    }
    let macs = nics
        .iter()
        .filter_map(|n| n.children().find(|c| c.has_tag_name("mac")))
        .filter_map(|m| {
            let a = m.attributes().find(|a| a.name() == "address")?;
            Some((a.range_value(), a.value().to_owned()))
        })
        .collect();
    let filterrefs = nics
        .iter()
        .flat_map(|n| n.children().filter(|c| c.has_tag_name("filterref")))
        .map(|f| f.range())
        .collect();
    let targets = nics
        .iter()
        .flat_map(|n| n.children().filter(|c| c.has_tag_name("target")))
        .map(|t| t.range())
        .collect();
    let logs = devices
        .iter()
        .filter(|d| d.has_tag_name("serial") || d.has_tag_name("console"))
        .flat_map(|d| d.children().filter(|c| c.has_tag_name("log")))
        .filter_map(|l| l.attributes().find(|a| a.name() == "file"))
        .map(|a| a.range_value())
        .collect();
    let agent_meta = doc
        .descendants()
        .find(|n| n.tag_name().namespace() == Some(NAPALM_NS) && n.tag_name().name() == "agent")
        .map(|n| n.range());
    let r = root.range();
    let domain_open_end = r.start + "<domain".len();
    let domain_close = xml[r.clone()]
        .rfind("</")
        .map(|i| r.start + i)
        .ok_or_else(|| Unsuitable::Xml("<domain> has no content".into()))?;
    Ok(Parts {
        name: text_range(name),
        uuid: child("uuid").map(|u| u.range()),
        cmdline: text_range(cmdline),
        cmdline_text: cmdline.text().unwrap_or_default().to_owned(),
        macs,
        filterrefs,
        targets,
        logs,
        agent_meta,
        domain_open_end,
        domain_close,
    })
}

/// The template domain of a clone's libvirt XML: named `name`, no UUID, its command line
/// with [`TEMPLATE_ARG`] added, the NIC at [`TEMPLATE_MAC`] without address filters or the
/// host-side name the agent gave the clone's port (`<target dev>`, per clone), its console
/// kept in `console_log`, and the agent's metadata saying it is `agent`'s template (not a
/// domain of the agent's: its reconciliation leaves it alone). No VM generation id
/// (`<genid/>`): qboot cannot allocate its buffer and the guest never starts (measured),
/// and Debian's cloud kernel has no driver for it; napalm-init reseeds the CRNG itself
/// (`napalm.seed=`).
pub fn template_xml(
    clone: &str,
    name: &str,
    console_log: &Path,
    agent: &str,
) -> Result<String, Unsuitable> {
    let p = parts(clone)?;
    let mut edits = vec![
        (p.name.clone(), esc(name)),
        (
            p.cmdline.clone(),
            esc(&format!("{} {TEMPLATE_ARG}", p.cmdline_text.trim())),
        ),
    ];
    if let Some(u) = p.uuid {
        edits.push((u, String::new()));
    }
    edits.extend(
        p.macs
            .iter()
            .map(|(r, _)| (r.clone(), TEMPLATE_MAC.to_owned())),
    );
    edits.extend(
        p.filterrefs
            .iter()
            .chain(&p.targets)
            .map(|r| (r.clone(), String::new())),
    );
    let log = esc(&console_log.to_string_lossy());
    edits.extend(p.logs.iter().map(|r| (r.clone(), log.clone())));
    if let Some(m) = p.agent_meta {
        edits.push((
            m,
            format!(
                "<napalm:template xmlns:napalm=\"{NAPALM_NS}\" agent=\"{}\"/>",
                esc(agent)
            ),
        ));
    }
    Ok(apply_edits(clone, edits))
}

/// The agent whose template a domain XML is (its `napalm:template` metadata), if any.
pub fn template_owner(xml: &str) -> Option<String> {
    crate::policy::napalm_attribute(xml, "template", "agent")
}

/// The key of a clone's template: its template XML without what is not the template's
/// shape (name, command line, console file, agent), with each of the domain's files
/// (`files`: path in the XML, content's blob id) named by its content: clones whose
/// memory at napalm-init's wait is the same share a template. The command line is left out
/// because until the wait napalm-init reads only which modules it needs from it.
pub fn template_key(clone: &str, files: &[(String, String)]) -> Result<String, Unsuitable> {
    let p = parts(clone)?;
    let mut shape = apply_edits(clone, vec![(p.cmdline.clone(), String::new())]);
    shape = template_xml(&shape, "", Path::new(""), "")?;
    for (path, blob) in files {
        shape = shape.replace(&esc(path), &format!("blob:{blob}"));
    }
    Ok(hex::encode(Sha256::digest(shape.as_bytes())))
}

/// The clone's command line (its `<cmdline>`) and its NIC's MAC, if any.
pub fn identity_parts(clone: &str) -> Result<(String, Option<String>), Unsuitable> {
    let p = parts(clone)?;
    Ok((
        p.cmdline_text.trim().to_owned(),
        p.macs.first().map(|(_, m)| m.clone()),
    ))
}

/// The clone's XML for its start from a template: its own, with the file `identity` (its
/// command line and what napalm-init sets as it resumes) in QEMU's fw_cfg as
/// [`IDENTITY_FILE`], and QEMU told to take its state from `socket`.
pub fn restore_xml(clone: &str, identity: &Path, socket: &Path) -> Result<String, Unsuitable> {
    let p = parts(clone)?;
    Ok(apply_edits(
        clone,
        vec![
            (
                p.domain_open_end..p.domain_open_end,
                format!(" xmlns:qemu=\"{QEMU_NS}\""),
            ),
            (
                p.domain_close..p.domain_close,
                format!(
                    "<sysinfo type=\"fwcfg\"><entry name=\"{IDENTITY_FILE}\" file=\"{}\"/></sysinfo>\
<qemu:commandline><qemu:arg value=\"-incoming\"/><qemu:arg value=\"unix:{}\"/></qemu:commandline>",
                    esc(&identity.to_string_lossy()),
                    esc(&socket.to_string_lossy())
                ),
            ),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLONE: &str = "<domain type='qemu'><name>c-01</name><uuid>0f0e</uuid>\
<memory unit='KiB'>131072</memory><vcpu>1</vcpu>\
<os><type arch='x86_64' machine='q35'>hvm</type><kernel>/s/domains/c-01/files/vmlinuz</kernel>\
<initrd>/s/domains/c-01/files/initrd.img</initrd><cmdline>root=nfs:10.0.0.1:/r ip=10.0.0.5::10.0.0.1:255.255.255.0:c-01 quiet</cmdline></os>\
<devices><interface type='network'><source network='n'/><mac address='52:54:aa:bb:00:01'/>\
<model type='virtio'/><target dev='np01'/><filterref filter='clean-traffic'><parameter name='IP' value='10.0.0.5'/></filterref></interface>\
<serial type='pty'><target port='0'/><log file='/s/domains/c-01/console.log' append='off'/></serial></devices>\
<metadata><napalm:agent xmlns:napalm='https://napalm.invalid/ns/agent/1' id='a1'/></metadata></domain>";

    fn other_clone() -> String {
        CLONE
            .replace("c-01", "c-02")
            .replace("0f0e", "a0a0")
            .replace("bb:00:01", "bb:00:02")
            .replace("10.0.0.5", "10.0.0.6")
            .replace("np01", "np02")
    }

    fn files(name: &str) -> Vec<(String, String)> {
        vec![
            (format!("/s/domains/{name}/files/vmlinuz"), "k1".into()),
            (format!("/s/domains/{name}/files/initrd.img"), "i1".into()),
        ]
    }

    #[test]
    fn the_template_is_the_clone_less_what_differs_clone_by_clone() {
        let t = template_xml(
            CLONE,
            "napalm-tpl-1",
            Path::new("/s/templates/k/console.log"),
            "a1",
        )
        .unwrap();
        let doc = roxmltree::Document::parse(&t).unwrap();
        let text = |tag: &str| {
            doc.descendants()
                .find(|n| n.has_tag_name(tag))
                .and_then(|n| n.text())
                .map(str::to_owned)
        };
        assert_eq!(text("name").as_deref(), Some("napalm-tpl-1"));
        assert_eq!(text("uuid"), None);
        assert!(text("cmdline").unwrap().ends_with("quiet napalm.template"));
        assert!(t.contains("address='52:54:00:00:00:00'"), "{t}");
        assert!(!t.contains("filterref"), "{t}");
        assert!(t.contains("<log file='/s/templates/k/console.log'"), "{t}");
        assert!(
            !t.contains("<target dev")
                && t.contains("napalm:template")
                && !t.contains("napalm:agent")
        );
        assert_eq!(crate::policy::owner_of(&t), None);
        assert_eq!(template_owner(&t).as_deref(), Some("a1"));
        assert_eq!(template_owner(CLONE), None);
    }

    #[test]
    fn clones_of_one_shape_share_a_key_and_another_shape_does_not() {
        let k1 = template_key(CLONE, &files("c-01")).unwrap();
        assert_eq!(k1, template_key(&other_clone(), &files("c-02")).unwrap());
        let more_memory = CLONE.replace("131072", "262144");
        assert_ne!(k1, template_key(&more_memory, &files("c-01")).unwrap());
        let mut other_image = files("c-01");
        other_image[1].1 = "i2".into();
        assert_ne!(k1, template_key(CLONE, &other_image).unwrap());
    }

    #[test]
    fn the_restore_carries_the_identity_in_fw_cfg_and_the_stream_socket() {
        let (cmdline, mac) = identity_parts(CLONE).unwrap();
        assert!(cmdline.starts_with("root=nfs:") && cmdline.ends_with("quiet"));
        assert_eq!(mac.as_deref(), Some("52:54:aa:bb:00:01"));
        let r = restore_xml(
            CLONE,
            Path::new("/tmp/in/x.identity"),
            Path::new("/tmp/in/x.sock"),
        )
        .unwrap();
        let doc = roxmltree::Document::parse(&r).unwrap();
        let entry = doc.descendants().find(|n| n.has_tag_name("entry")).unwrap();
        assert_eq!(entry.attribute("name"), Some(IDENTITY_FILE));
        assert_eq!(entry.attribute("file"), Some("/tmp/in/x.identity"));
        let args: Vec<_> = doc
            .descendants()
            .filter(|n| {
                n.tag_name().namespace() == Some(QEMU_NS) && n.has_tag_name((QEMU_NS, "arg"))
            })
            .filter_map(|n| n.attribute("value"))
            .collect();
        assert_eq!(args, ["-incoming", "unix:/tmp/in/x.sock"]);
        // Everything else is the clone's own.
        assert!(r.contains("<name>c-01</name><uuid>0f0e</uuid>") && r.contains("filterref"));
    }

    #[test]
    fn domains_a_template_cannot_serve_are_named_with_the_reason() {
        let test = CLONE.replace("type='qemu'", "type='test'");
        assert_eq!(
            template_key(&test, &[]),
            Err(Unsuitable::NotQemu("test".into()))
        );
        let disk = CLONE.replace("<devices>", "<devices><disk type='file' device='disk'/>");
        assert_eq!(template_key(&disk, &[]), Err(Unsuitable::Disks));
        let two = CLONE.replace("<devices>", "<devices><interface type='user'/>");
        assert_eq!(template_key(&two, &[]), Err(Unsuitable::Interfaces(2)));
        let no_kernel = CLONE
            .replace("<cmdline>", "<x>")
            .replace("</cmdline>", "</x>");
        assert_eq!(template_key(&no_kernel, &[]), Err(Unsuitable::NoKernel));
    }
}
