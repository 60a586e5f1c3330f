//! The guest's serial console. The policy gives the console device of every domain a
//! `<log file='STATE/domains/NAME/console.log' append='off'/>` ([`crate::policy::check`]),
//! so libvirt (virtlogd, or QEMU itself) writes what the guest prints there, afresh at each
//! start of the domain. The agent bounds the file ([`bound`], from its watcher: a file
//! past [`MAX_BYTES`] keeps only its last [`KEEP_BYTES`]) and serves its last lines
//! ([`Agent::console`]): what a clone that never registered printed while booting.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::Agent;
use crate::error::{AgentError, Result};

/// The console file's name in the domain's directory (beside `record.json`, outside
/// `files/`, so no client file can be it).
pub const CONSOLE_LOG: &str = "console.log";
/// Lines returned when the caller asks for 0.
pub const DEFAULT_LINES: usize = 20;
/// The most lines one call returns.
pub const MAX_LINES: usize = 1000;
/// The most bytes read from the end of the console file for one call.
pub const TAIL_BYTES: u64 = 64 << 10;
/// A console file larger than this is cut down to its end by [`bound`].
pub const MAX_BYTES: u64 = 1 << 20;
/// How much of the end a cut console file keeps.
pub const KEEP_BYTES: u64 = 128 << 10;

/// The end of a domain's console.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsoleView {
    /// Domain name.
    pub name: String,
    /// The last non-empty lines, oldest first, cleaned with [`clean`].
    pub lines: Vec<String>,
    /// Whether the domain's definition keeps its console in the agent's file (false: no
    /// serial or console device, or defined before the agent kept consoles).
    pub logged: bool,
}

impl Agent {
    /// Where the agent keeps `name`'s console.
    pub(crate) fn console_log(&self, name: &str) -> PathBuf {
        self.store.dir(name).join(CONSOLE_LOG)
    }

    /// The last `lines` non-empty lines of an owned domain's console (0: [`DEFAULT_LINES`],
    /// at most [`MAX_LINES`]), read from at most the last [`TAIL_BYTES`] of its file. A
    /// guest that printed nothing yet gives no lines.
    pub async fn console(&self, name: &str, lines: usize) -> Result<ConsoleView> {
        let r = self.require(name)?;
        let n = if lines == 0 {
            DEFAULT_LINES
        } else {
            lines.min(MAX_LINES)
        };
        let path = self.console_log(name);
        let logged =
            crate::policy::console_log_of(&r.libvirt_xml).as_deref() == Some(path.as_path());
        let p = path.clone();
        let lines = tokio::task::spawn_blocking(move || tail_lines(&p, n))
            .await
            .map_err(|e| AgentError::io(&path, std::io::Error::other(e.to_string())))?
            .map_err(|e| AgentError::io(&path, e))?;
        Ok(ConsoleView {
            name: name.to_owned(),
            lines,
            logged,
        })
    }

    /// Cuts every domain's console file that grew past [`MAX_BYTES`] down to its last
    /// [`KEEP_BYTES`]; returns the domains whose file was cut. Cheap when nothing grew:
    /// one `stat` per domain.
    pub fn bound_consoles(&self) -> Result<Vec<String>> {
        let mut cut = Vec::new();
        for name in self.store.names()? {
            let path = self.console_log(&name);
            match bound(&path, MAX_BYTES, KEEP_BYTES) {
                Ok(true) => {
                    tracing::info!(domain = %name, max = MAX_BYTES, "console file cut down to its end");
                    cut.push(name);
                }
                Ok(false) => {}
                Err(e) => return Err(AgentError::io(&path, e)),
            }
        }
        Ok(cut)
    }
}

/// Reads at most the last `max` bytes of `path`; also says whether that started mid-file.
/// A missing file reads as empty.
fn read_end(path: &Path, max: u64) -> std::io::Result<(Vec<u8>, bool)> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let from = len.saturating_sub(max);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity((len - from) as usize);
    f.take(max).read_to_end(&mut buf)?;
    Ok((buf, from > 0))
}

/// The last `n` non-empty lines of the console file at `path`, cleaned; reads at most its
/// last [`TAIL_BYTES`]. A missing file has no lines.
pub fn tail_lines(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let (bytes, mid) = read_end(path, TAIL_BYTES)?;
    Ok(last_lines(&bytes, n, mid))
}

/// The last `n` non-empty lines of `bytes`, oldest first, each [`clean`]ed. With
/// `starts_mid_line` the first line is a fragment (the bytes were cut from a longer
/// file) and is dropped.
pub fn last_lines(bytes: &[u8], n: usize, starts_mid_line: bool) -> Vec<String> {
    let mut parts: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if starts_mid_line && !parts.is_empty() {
        parts.remove(0);
    }
    let mut out: Vec<String> = parts
        .iter()
        .rev()
        .map(|l| clean(&String::from_utf8_lossy(l)))
        .filter(|l| !l.is_empty())
        .take(n)
        .collect();
    out.reverse();
    out
}

/// One console line as text: what follows its last carriage return (a terminal would
/// have overwritten the rest), without terminal escape sequences (CSI `ESC [ … final`,
/// OSC `ESC ] … BEL`, two-character `ESC x`) or other control characters (NULs of a
/// sparse file included), tabs as spaces, trailing blanks trimmed.
pub fn clean(line: &str) -> String {
    let line = line.trim_end_matches('\r');
    let line = line.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("");
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => {
                    // Parameters and intermediates, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.truncate(out.trim_end().len());
    out
}

/// Keeps the console file at `path` under `max` bytes: a larger one is cut down to its
/// last `keep` bytes, from a line start. The file is truncated and rewritten in place
/// through an append-mode descriptor, so the writer that holds it open (virtlogd, which
/// appends) goes on writing at its end; what it writes between the read and the
/// truncation is lost. Returns whether it cut. A missing file is fine.
pub fn bound(path: &Path, max: u64, keep: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    let (tail, mid) = read_end(path, keep)?;
    let start = if mid {
        tail.iter()
            .position(|b| *b == b'\n')
            .map_or(tail.len(), |i| i + 1)
    } else {
        0
    };
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.set_len(0)?;
    f.write_all(&tail[start..])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_are_the_newest_non_empty_ones_oldest_first() {
        let text = b"one\r\ntwo\r\n\r\nthree\r\nfour\r\n";
        assert_eq!(last_lines(text, 2, false), ["three", "four"]);
        assert_eq!(last_lines(text, 10, false), ["one", "two", "three", "four"]);
        assert_eq!(last_lines(text, 0, false), Vec::<String>::new());
        assert_eq!(last_lines(b"", 5, false), Vec::<String>::new());
        // A window cut mid-line drops the fragment.
        assert_eq!(last_lines(b"ment\nwhole\n", 5, true), ["whole"]);
        // A last line without its newline yet is still shown.
        assert_eq!(last_lines(b"a\nb", 5, false), ["a", "b"]);
    }

    #[test]
    fn lines_lose_escapes_controls_and_overwritten_text() {
        assert_eq!(
            clean("\u{1b}[0;32m  OK  \u{1b}[0m Started x.\r"),
            "  OK   Started x."
        );
        assert_eq!(clean("\u{1b}]0;title\u{7}prompt$ "), "prompt$");
        assert_eq!(clean("\u{1b}]0;t\u{1b}\\after"), "after");
        assert_eq!(clean("10%\r50%\r100%"), "100%");
        assert_eq!(clean("a\tb\0\0c\u{7f}"), "a bc");
        assert_eq!(
            last_lines(b"\xffbad utf8\n", 1, false),
            ["\u{fffd}bad utf8"]
        );
    }

    #[test]
    fn tail_reads_at_most_the_window_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(CONSOLE_LOG);
        assert!(tail_lines(&p, 5).expect("missing").is_empty());
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("[{i:>8}] kernel line\n"));
        }
        assert!(text.len() as u64 > TAIL_BYTES * 2);
        std::fs::write(&p, &text).expect("write");
        let got = tail_lines(&p, MAX_LINES).expect("tail");
        assert_eq!(
            got.last().map(String::as_str),
            Some("[   19999] kernel line")
        );
        let read: usize = got.iter().map(|l| l.len() + 1).sum();
        assert!(read as u64 <= TAIL_BYTES, "read {read} bytes");
        assert!(got[0].starts_with('['), "no fragment first: {:?}", got[0]);
        assert_eq!(tail_lines(&p, 3).expect("tail").len(), 3);
    }

    #[test]
    fn bound_cuts_a_large_file_to_its_end_at_a_line_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(CONSOLE_LOG);
        assert!(!bound(&p, 100, 50).expect("missing is fine"));
        std::fs::write(&p, "short\n").expect("write");
        assert!(!bound(&p, 100, 50).expect("small"));
        let text: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
        std::fs::write(&p, &text).expect("write");
        // A writer holding the file open in append mode (as virtlogd does).
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .expect("open");
        assert!(bound(&p, 500, 100).expect("cut"));
        let kept = std::fs::read_to_string(&p).expect("read");
        assert!(kept.len() <= 100, "{} bytes kept", kept.len());
        assert!(kept.starts_with("line "), "{kept:?}");
        assert!(kept.ends_with("line 099\n"), "{kept:?}");
        // The writer goes on at the new end.
        f.write_all(b"line 100\n").expect("append");
        let after = std::fs::read_to_string(&p).expect("read");
        assert_eq!(after.len(), kept.len() + 9);
        assert_eq!(
            last_lines(after.as_bytes(), 2, false),
            ["line 099", "line 100"]
        );
    }
}
