//! The guest's console the agent keeps: which device carries it (the first `<serial>`,
//! else the first `<console>`), the `<log>` edit that sends it to the agent's file, and
//! reading that file's name back from a domain's libvirt XML.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::escape;

/// The device that carries the guest's console: the first `<serial>` of `<devices>`,
/// else the first `<console>`.
pub(super) fn console_device<'a, 'i>(
    root: roxmltree::Node<'a, 'i>,
) -> Option<roxmltree::Node<'a, 'i>> {
    let devices = root.children().find(|c| c.has_tag_name("devices"))?;
    let no_ns = |c: &roxmltree::Node<'_, '_>, tag: &str| {
        c.is_element() && c.tag_name().name() == tag && c.tag_name().namespace().is_none()
    };
    devices
        .children()
        .find(|c| no_ns(c, "serial"))
        .or_else(|| devices.children().find(|c| no_ns(c, "console")))
}

/// The edit that makes `dev` log to `log` (truncated at each start of the domain): its
/// `<log>` replaced, or one added (a self-closing `<serial …/>` is opened for it).
pub(super) fn console_log_edit(
    xml: &str,
    dev: roxmltree::Node<'_, '_>,
    log: &Path,
) -> (Range<usize>, String) {
    let element = format!(
        "<log file=\"{}\" append=\"off\"/>",
        escape(&log.to_string_lossy())
    );
    if let Some(old) = dev.children().find(|c| c.has_tag_name("log")) {
        return (old.range(), element);
    }
    let r = dev.range();
    let text = &xml[r.clone()];
    if text.ends_with("/>") {
        let at = r.end - 2;
        let tag = dev.tag_name().name();
        return (at..r.end, format!(">{element}</{tag}>"));
    }
    let at = text.rfind("</").map_or(r.end, |i| r.start + i);
    (at..at, element)
}

/// The file the agent keeps a domain's console in, as the libvirt XML names it (`None`
/// when it keeps none: no serial or console device, or defined before consoles were kept).
pub fn console_log_of(libvirt_xml: &str) -> Option<PathBuf> {
    let doc = roxmltree::Document::parse(libvirt_xml).ok()?;
    let dev = console_device(doc.root_element())?;
    dev.children()
        .find(|c| c.has_tag_name("log"))
        .and_then(|l| l.attribute("file"))
        .map(PathBuf::from)
}
