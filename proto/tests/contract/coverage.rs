//! Which fields of which `napalm.v1` messages crossed the wire.
//!
//! Every message exchanged in the round trip is re-encoded and walked with the package's
//! own descriptor set: each field number seen is recorded against its message type,
//! recursing into nested napalm messages and map entries. The test then asserts that
//! every field of every message in the descriptor set was seen at least once, so a field
//! added to the contract without being exercised fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use napalm_proto::v1::FILE_DESCRIPTOR_SET;
use prost::Message;
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorSet};

/// `(message full name, field number)` pairs seen so far, across all threads.
static SEEN: Mutex<BTreeSet<(String, i32)>> = Mutex::new(BTreeSet::new());

/// All napalm.v1 message types, by full name with a leading dot, with their fields:
/// number → nested message type (when the field is a napalm message).
pub fn schema() -> BTreeMap<String, BTreeMap<i32, Option<String>>> {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let mut out = BTreeMap::new();
    for file in &set.file {
        if file.package() != "napalm.v1" {
            continue;
        }
        for msg in &file.message_type {
            add_message(&mut out, ".napalm.v1", msg);
        }
    }
    out
}

fn add_message(
    out: &mut BTreeMap<String, BTreeMap<i32, Option<String>>>,
    scope: &str,
    msg: &DescriptorProto,
) {
    let name = format!("{scope}.{}", msg.name());
    let fields = msg
        .field
        .iter()
        .map(|f| {
            let nested = (f.r#type() == Type::Message && f.type_name().starts_with(".napalm.v1."))
                .then(|| f.type_name().to_owned());
            (f.number(), nested)
        })
        .collect();
    for nested in &msg.nested_type {
        add_message(out, &name, nested);
    }
    out.insert(name, fields);
}

/// Records every field present in `msg` (and, recursively, in its napalm sub-messages).
pub fn record<M: Message + prost::Name>(msg: &M) {
    let schema = schema();
    let bytes = msg.encode_to_vec();
    let mut seen = SEEN.lock().expect("coverage lock");
    walk(&schema, &format!(".{}", M::full_name()), &bytes, &mut seen);
}

fn walk(
    schema: &BTreeMap<String, BTreeMap<i32, Option<String>>>,
    ty: &str,
    mut buf: &[u8],
    seen: &mut BTreeSet<(String, i32)>,
) {
    let fields = schema
        .get(ty)
        .unwrap_or_else(|| panic!("{ty} is not in the napalm.v1 descriptor set"));
    // Empty messages are seen by being exchanged at all.
    seen.insert((ty.to_owned(), 0));
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).expect("field key");
        let number = (key >> 3) as i32;
        let wire = key & 7;
        seen.insert((ty.to_owned(), number));
        match wire {
            0 => {
                prost::encoding::decode_varint(&mut buf).expect("varint");
            }
            1 => buf = &buf[8..],
            5 => buf = &buf[4..],
            2 => {
                let len = prost::encoding::decode_varint(&mut buf).expect("length") as usize;
                let (body, rest) = buf.split_at(len);
                if let Some(Some(nested)) = fields.get(&number) {
                    walk(schema, nested, body, seen);
                }
                buf = rest;
            }
            other => panic!("unexpected wire type {other} in {ty}"),
        }
    }
}

/// Fields of the contract never seen on the wire, as `Message.field_number`.
pub fn missing() -> Vec<String> {
    let seen = SEEN.lock().expect("coverage lock");
    let mut missing = Vec::new();
    for (ty, fields) in schema() {
        if !seen.contains(&(ty.clone(), 0)) {
            missing.push(format!("{ty} (never exchanged)"));
            continue;
        }
        for number in fields.keys() {
            if !seen.contains(&(ty.clone(), *number)) {
                missing.push(format!("{ty}.{number}"));
            }
        }
    }
    missing
}
