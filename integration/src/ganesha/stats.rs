//! nfs-ganesha's own counters, read over D-Bus from `/org/ganesha/nfsd/ExportMgr`,
//! interface `org.ganesha.nfsd.exportstats` (nfs-ganesha 4.3, `src/support/export_mgr.c`
//! and `server_stats.c`). Three calls, each answering `(b status, s message, (tt) since)`
//! and then:
//!
//! - `GetGlobalOPS` → `(sts…)`: pairs of protocol and count since start, `"NFSv3"`,
//!   `"NFSv40"`, `"NFSv41"`, `"NFSv42"`, `"NLM4"`, `"MNTv1"`, `"MNTv3"`, `"RQUOTA"`. For
//!   NFSv4 the count is of operations, not COMPOUNDs, although ganesha's counter is named
//!   `compounds`: 4.3 records it once per operation (`server_stats_nfsv4_op_done`), so the
//!   three NFSv4 counts add up to `GetFastOPS`'s NFSv4 operations (the `nfs_stats` test
//!   checks it). ganesha 4.3 counts COMPOUNDs only per export and per client;
//! - `GetFastOPS` → `(s…)`: a section header string per protocol (`"NFSv3:"`,
//!   `"\nNFSv4:"`, `"\nNLM:"`, `"\nMNT:"`, `"\nQUOTA:"`), each followed by the pairs of
//!   operation name and count of the operations seen at least once (`"READ"`, `uint64 12`);
//! - `GetNFSIO` → `a(qs(tttttt)(tttttt))`: per export id and protocol version (`"NFSv40"`…),
//!   READ then WRITE as (bytes requested, bytes transferred, operations, errors, latency
//!   in ns summed, 0).
//!
//! All three count when `NFS_CORE_PARAM { Enable_NFS_Stats = true; }` (the default);
//! `Enable_Fast_Stats = true` leaves only `GetFastOPS`'s counts and the bytes (the
//! per-version counts stay at zero, latencies are not recorded: seen with 4.3 here), so
//! the grid's configuration sets both explicitly. Nothing else needs enabling (`GetFULLV4Stats`, which needs
//! `Enable_FULLV4_Stats`, adds latencies per operation, which nothing here uses). ganesha
//! answers status true with a message other than `OK` when counting is disabled: that is
//! taken as a refusal, never as zeros.

use std::collections::BTreeMap;

use super::bus::PrivateBus;
use super::error::GaneshaError;
use super::reply::Value;
use super::{BUS_NAME, STATS_INTERFACE, STATS_PATH};

/// One direction of an export's transfers (`GetNFSIO`'s `(tttttt)`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes the clients asked for.
    pub requested: u64,
    /// Bytes actually read or written.
    pub transferred: u64,
    /// READ or WRITE operations.
    pub ops: u64,
    /// Of which failed.
    pub errors: u64,
    /// Their latencies summed, in nanoseconds.
    pub latency_ns: u64,
}

impl Transfer {
    fn since(&self, earlier: &Transfer) -> Transfer {
        Transfer {
            requested: self.requested.saturating_sub(earlier.requested),
            transferred: self.transferred.saturating_sub(earlier.transferred),
            ops: self.ops.saturating_sub(earlier.ops),
            errors: self.errors.saturating_sub(earlier.errors),
            latency_ns: self.latency_ns.saturating_sub(earlier.latency_ns),
        }
    }
}

/// Reads and writes of one export over one protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportIo {
    /// The export's `Export_Id` (0 is ganesha's pseudo filesystem).
    pub export_id: u16,
    /// `NFSv3`, `NFSv40`, `NFSv41` or `NFSv42`.
    pub protocol: String,
    /// READ operations.
    pub read: Transfer,
    /// WRITE operations.
    pub write: Transfer,
}

/// A snapshot of ganesha's counters since it started (or their difference between two
/// snapshots, [`NfsStats::since`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NfsStats {
    /// Calls by protocol (`GetGlobalOPS`); for `NFSv40`, `NFSv41` and `NFSv42` the
    /// operations of each minor version (see the module's doc).
    pub by_version: BTreeMap<String, u64>,
    /// Operations by protocol section (`NFSv3`, `NFSv4`, `NLM`, `MNT`, `QUOTA`) and
    /// name (`GetFastOPS`): for NFSv4 each operation inside the COMPOUNDs (`PUTFH`,
    /// `GETATTR`, `LOOKUP`, `READ`…).
    pub ops: BTreeMap<String, BTreeMap<String, u64>>,
    /// Bytes read and written per export and protocol version (`GetNFSIO`).
    pub io: Vec<ExportIo>,
}

impl NfsStats {
    /// Reads the three counters from the ganesha that owns `org.ganesha.nfsd` on `bus`.
    pub fn query(bus: &PrivateBus) -> Result<Self, GaneshaError> {
        let call = |method: &str| {
            let member = format!("{STATS_INTERFACE}.{method}");
            let reply = bus.call(BUS_NAME, STATS_PATH, &member, &[])?;
            payload(method, reply)
        };
        Ok(NfsStats {
            by_version: by_version(&call("GetGlobalOPS")?)?,
            ops: ops(&call("GetFastOPS")?)?,
            io: io(&call("GetNFSIO")?)?,
        })
    }

    /// NFSv4 operations by minor version (`NFSv40`, `NFSv41`, `NFSv42`), from
    /// `GetGlobalOPS`: together the same count as [`Self::nfs4_ops_total`].
    pub fn nfs4_ops_by_version(&self) -> BTreeMap<String, u64> {
        self.by_version
            .iter()
            .filter(|(p, _)| p.starts_with("NFSv4"))
            .map(|(p, n)| (p.clone(), *n))
            .collect()
    }

    /// NFSv4 operations by name.
    pub fn nfs4_ops(&self) -> BTreeMap<String, u64> {
        self.ops.get("NFSv4").cloned().unwrap_or_default()
    }

    /// NFSv4 operations in all (`GetFastOPS`).
    pub fn nfs4_ops_total(&self) -> u64 {
        self.ops.get("NFSv4").map_or(0, |m| m.values().sum())
    }

    /// How many NFSv4 operations `name` (`READ`, `LOOKUP`…) ganesha counted.
    pub fn nfs4_op(&self, name: &str) -> u64 {
        self.ops
            .get("NFSv4")
            .and_then(|m| m.get(name))
            .copied()
            .unwrap_or(0)
    }

    /// The `n` most frequent NFSv4 operations, most frequent first (ties by name).
    pub fn top_nfs4_ops(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.nfs4_ops().into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// READ operations and bytes of every export and version together.
    pub fn read(&self) -> Transfer {
        self.total(|io| io.read, |_| true)
    }

    /// WRITE operations and bytes of every export and version together.
    pub fn write(&self) -> Transfer {
        self.total(|io| io.write, |_| true)
    }

    /// READ operations and bytes of export `id`, all versions.
    pub fn read_of(&self, id: u16) -> Transfer {
        self.total(|io| io.read, |io| io.export_id == id)
    }

    fn total(
        &self,
        side: impl Fn(&ExportIo) -> Transfer,
        keep: impl Fn(&ExportIo) -> bool,
    ) -> Transfer {
        self.io
            .iter()
            .filter(|io| keep(io))
            .map(side)
            .fold(Transfer::default(), |a, t| Transfer {
                requested: a.requested + t.requested,
                transferred: a.transferred + t.transferred,
                ops: a.ops + t.ops,
                errors: a.errors + t.errors,
                latency_ns: a.latency_ns + t.latency_ns,
            })
    }

    /// What was counted between `earlier` and this snapshot, counter by counter (a counter
    /// that went down, ganesha having restarted in between, counts 0).
    pub fn since(&self, earlier: &NfsStats) -> NfsStats {
        let by_version = self
            .by_version
            .iter()
            .map(|(k, n)| {
                let before = earlier.by_version.get(k).copied().unwrap_or(0);
                (k.clone(), n.saturating_sub(before))
            })
            .collect();
        let ops = self
            .ops
            .iter()
            .map(|(section, m)| {
                let old = earlier.ops.get(section);
                let m = m
                    .iter()
                    .map(|(op, n)| {
                        let before = old.and_then(|o| o.get(op)).copied().unwrap_or(0);
                        (op.clone(), n.saturating_sub(before))
                    })
                    .filter(|(_, n)| *n > 0)
                    .collect();
                (section.clone(), m)
            })
            .collect();
        let io = self
            .io
            .iter()
            .map(|io| {
                let old = earlier
                    .io
                    .iter()
                    .find(|o| o.export_id == io.export_id && o.protocol == io.protocol);
                match old {
                    Some(o) => ExportIo {
                        read: io.read.since(&o.read),
                        write: io.write.since(&o.write),
                        ..io.clone()
                    },
                    None => io.clone(),
                }
            })
            .collect();
        NfsStats {
            by_version,
            ops,
            io,
        }
    }
}

/// The arguments after `(b status, s message, (tt) since)`, once ganesha said `OK`.
fn payload(method: &str, reply: Vec<Value>) -> Result<Vec<Value>, GaneshaError> {
    let mut it = reply.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(Value::Bool(ok)), Some(Value::Str(message)), Some(Value::Struct(_))) => {
            if ok && message == "OK" {
                Ok(it.collect())
            } else {
                Err(GaneshaError::Refused {
                    method: method.to_owned(),
                    message,
                })
            }
        }
        (a, b, c) => Err(GaneshaError::Shape {
            method: method.to_owned(),
            expected: "(boolean status, string message, struct timestamp, …)",
            got: format!("{a:?}, {b:?}, {c:?}"),
        }),
    }
}

fn shape(method: &str, expected: &'static str, got: &[Value]) -> GaneshaError {
    GaneshaError::Shape {
        method: method.to_owned(),
        expected,
        got: format!("{got:?}"),
    }
}

/// `GetGlobalOPS`'s `(sts…)`.
fn by_version(rest: &[Value]) -> Result<BTreeMap<String, u64>, GaneshaError> {
    const EXPECTED: &str = "a struct of (string protocol, uint64 count) pairs";
    let bad = || shape("GetGlobalOPS", EXPECTED, rest);
    let [Value::Struct(members)] = rest else {
        return Err(bad());
    };
    members
        .chunks(2)
        .map(|pair| match pair {
            [Value::Str(p), Value::UInt(n)] => Ok((p.clone(), *n)),
            _ => Err(bad()),
        })
        .collect()
}

/// `GetFastOPS`'s `(s…)`: section headers (a string ending in `:`), then name and count
/// pairs.
fn ops(rest: &[Value]) -> Result<BTreeMap<String, BTreeMap<String, u64>>, GaneshaError> {
    const EXPECTED: &str = "a struct of section headers (\"NFSv4:\") each followed by (string operation, uint64 count) pairs";
    let bad = || shape("GetFastOPS", EXPECTED, rest);
    let [Value::Struct(members)] = rest else {
        return Err(bad());
    };
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut it = members.iter().peekable();
    while let Some(v) = it.next() {
        let Value::Str(s) = v else { return Err(bad()) };
        if let Some(Value::UInt(n)) = it.peek() {
            let sec = section.as_ref().ok_or_else(bad)?;
            out.entry(sec.clone()).or_default().insert(s.clone(), *n);
            it.next();
        } else {
            let name = s.trim().trim_end_matches(':').to_owned();
            out.entry(name.clone()).or_default();
            section = Some(name);
        }
    }
    Ok(out)
}

/// `GetNFSIO`'s `a(qs(tttttt)(tttttt))`.
fn io(rest: &[Value]) -> Result<Vec<ExportIo>, GaneshaError> {
    const EXPECTED: &str =
        "an array of (uint16 export id, string protocol, (6 x uint64) read, (6 x uint64) write)";
    let bad = || shape("GetNFSIO", EXPECTED, rest);
    let [Value::Array(entries)] = rest else {
        return Err(bad());
    };
    let transfer = |v: &Value| -> Option<Transfer> {
        let m = v.members()?;
        let n = |i: usize| m.get(i).and_then(Value::as_u64);
        Some(Transfer {
            requested: n(0)?,
            transferred: n(1)?,
            ops: n(2)?,
            errors: n(3)?,
            latency_ns: n(4)?,
        })
    };
    entries
        .iter()
        .map(|e| {
            let m = e.members().ok_or_else(bad)?;
            match m {
                [Value::UInt(id), Value::Str(protocol), r, w] => Ok(ExportIo {
                    export_id: u16::try_from(*id).map_err(|_| bad())?,
                    protocol: protocol.clone(),
                    read: transfer(r).ok_or_else(bad)?,
                    write: transfer(w).ok_or_else(bad)?,
                }),
                _ => Err(bad()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::reply::parse;
    use super::*;

    fn rest(method: &str, text: &str) -> Vec<Value> {
        payload(method, parse(text).expect("parses")).expect("OK")
    }

    const HEAD: &str =
        "method return time=1 sender=:1.0 -> destination=:1.8 serial=14 reply_serial=2
   boolean true
   string \"OK\"
   struct {
      uint64 1796127217
      uint64 261322158
   }
";

    /// Snapshots as ganesha 4.3 answered them after `nfs-cat` read a 300000-byte file over
    /// NFSv4.0 from export 7.
    fn after_one_read() -> NfsStats {
        let global = format!(
            "{HEAD}   struct {{\n      string \"NFSv3\"\n      uint64 0\n      string \"NFSv40\"\n      uint64 8\n      string \"NFSv41\"\n      uint64 2\n      string \"NLM4\"\n      uint64 0\n   }}\n"
        );
        let fast = format!(
            "{HEAD}   struct {{\n      string \"NFSv3:\"\n      string \"\nNFSv4:\"\n      string \"GETATTR\"\n      uint64 3\n      string \"PUTFH\"\n      uint64 5\n      string \"READ\"\n      uint64 1\n      string \"OPEN\"\n      uint64 1\n      string \"\nNLM:\"\n   }}\n"
        );
        let t = |a: u64, b: u64, c: u64, ns: u64| {
            format!("         struct {{\n            uint64 {a}\n            uint64 {b}\n            uint64 {c}\n            uint64 0\n            uint64 {ns}\n            uint64 0\n         }}\n")
        };
        let io_text = format!(
            "{HEAD}   array [\n      struct {{\n         uint16 7\n         string \"NFSv40\"\n{}{}      }}\n      struct {{\n         uint16 0\n         string \"NFSv40\"\n{}{}      }}\n   ]\n",
            t(300000, 300000, 1, 356048),
            t(0, 0, 0, 0),
            t(0, 0, 0, 0),
            t(0, 0, 0, 0)
        );
        NfsStats {
            by_version: by_version(&rest("GetGlobalOPS", &global)).expect("global"),
            ops: ops(&rest("GetFastOPS", &fast)).expect("fast"),
            io: io(&rest("GetNFSIO", &io_text)).expect("io"),
        }
    }

    #[test]
    fn reads_the_three_replies() {
        let s = after_one_read();
        assert_eq!(s.nfs4_ops_by_version().values().sum::<u64>(), 10);
        assert_eq!(s.nfs4_ops_by_version().len(), 2);
        assert_eq!(s.by_version["NFSv3"], 0);
        assert_eq!(s.nfs4_op("READ"), 1);
        assert_eq!(s.nfs4_op("PUTFH"), 5);
        assert_eq!(s.nfs4_op("WRITE"), 0);
        assert_eq!(s.nfs4_ops_total(), 10);
        assert!(s.ops["NFSv3"].is_empty() && s.ops["NLM"].is_empty());
        assert_eq!(
            s.top_nfs4_ops(3),
            vec![
                ("PUTFH".into(), 5),
                ("GETATTR".into(), 3),
                ("OPEN".into(), 1)
            ]
        );
        assert_eq!(s.read().transferred, 300000);
        assert_eq!(s.read().ops, 1);
        assert_eq!(s.read().latency_ns, 356048);
        assert_eq!(s.read_of(7).transferred, 300000);
        assert_eq!(s.read_of(0).transferred, 0);
        assert_eq!(s.write(), Transfer::default());
    }

    #[test]
    fn differences_count_only_what_happened_between() {
        let after = after_one_read();
        let mut before = after.clone();
        before.by_version.insert("NFSv40".into(), 4);
        before
            .ops
            .get_mut("NFSv4")
            .expect("v4")
            .insert("PUTFH".into(), 2);
        before.ops.get_mut("NFSv4").expect("v4").remove("READ");
        before.io[0].read = Transfer::default();
        let d = after.since(&before);
        assert_eq!(d.nfs4_ops_by_version()["NFSv40"], 4);
        assert_eq!(d.nfs4_ops_by_version()["NFSv41"], 0);
        assert_eq!(d.nfs4_op("PUTFH"), 3);
        assert_eq!(d.nfs4_op("READ"), 1);
        assert_eq!(d.nfs4_op("GETATTR"), 0);
        assert_eq!(d.read().transferred, 300000);
        // Nothing moved: all zero.
        let none = after.since(&after);
        assert!(none.nfs4_ops_by_version().values().all(|n| *n == 0));
        assert_eq!(none.nfs4_ops_total(), 0);
        assert_eq!(none.read(), Transfer::default());
    }

    #[test]
    fn counting_disabled_is_a_refusal_not_zeros() {
        let text = HEAD.replace("\"OK\"", "\"NFS stat counting disabled\"");
        let e = payload("GetGlobalOPS", parse(&text).expect("parses")).unwrap_err();
        assert!(
            e.to_string()
                .contains("refused GetGlobalOPS: NFS stat counting disabled"),
            "{e}"
        );
        let e = by_version(&[Value::Str("x".into())]).unwrap_err();
        assert!(e.to_string().contains("GetGlobalOPS answered"), "{e}");
    }
}
