//! A YAML tree that remembers the line and column of every node.
//!
//! serde_yaml is the authority on what is valid YAML (syntax, duplicate keys, its own alias
//! and recursion limits): the text goes through it first so its messages (with line:col)
//! reach the user. serde_yaml has no positions for values, so the same text is then read
//! through saphyr-parser's events into [`Node`]s that carry their marks. Aliases are expanded
//! here under a node budget, so an alias bomb is refused rather than expanded.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

use crate::error::ConfigError;

/// Limits on what one YAML document may expand to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct YamlLimits {
    /// Nodes after alias expansion.
    pub max_nodes: usize,
    /// Nesting depth.
    pub max_depth: usize,
}

/// A scalar, sequence or mapping with its 1-based position.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub kind: Kind,
    pub line: usize,
    pub col: usize,
}

/// Node content. Mapping keys keep their own positions.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key (always a string here) with its position.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Key {
    pub name: String,
    pub line: usize,
    pub col: usize,
}

enum Frame {
    Seq(Node, usize),
    Map(Node, usize, Option<Key>),
}

/// Parse `text` (named `file` in messages) into a positioned tree.
pub(crate) fn parse(file: &str, text: &str, limits: YamlLimits) -> Result<Node, ConfigError> {
    // 1. serde_yaml validates (syntax, duplicate keys, its alias/recursion limits).
    if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        // Some serde_yaml errors (duplicate keys) carry no useful position: the positioned
        // pass below finds the same problem with its line and column.
        parse_marked(file, text, limits)?;
        let (line, col) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        return Err(ConfigError::Syntax {
            file: file.to_string(),
            line,
            col,
            message: e.to_string(),
        });
    }
    parse_marked(file, text, limits)
}

/// The positioned pass over saphyr events.
fn parse_marked(file: &str, text: &str, limits: YamlLimits) -> Result<Node, ConfigError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut nodes = 0usize;
    let mut root: Option<Node> = None;
    let bomb = |line: usize, col: usize| ConfigError::TooLarge {
        file: file.to_string(),
        line,
        col,
        what: format!(
            "the document expands to more than {} nodes (an alias bomb?)",
            limits.max_nodes
        ),
    };
    for ev in Parser::new_from_str(text) {
        let (ev, span) = ev.map_err(|e| ConfigError::Syntax {
            file: file.to_string(),
            line: e.marker().line(),
            col: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
        let (line, col) = (span.start.line(), span.start.col() + 1);
        let done: Option<(Node, usize)> = match ev {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                if root.is_some() {
                    return Err(ConfigError::Syntax {
                        file: file.to_string(),
                        line,
                        col,
                        message: "a second YAML document; clones.conf holds exactly one".into(),
                    });
                }
                None
            }
            Event::Scalar(v, style, anchor, tag) => {
                nodes += 1;
                let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let kind = if style == ScalarStyle::Plain && !forced_str {
                    plain_scalar(&v)
                } else {
                    Kind::Str(v.into_owned())
                };
                Some((Node { kind, line, col }, anchor))
            }
            Event::Alias(id) => {
                let Some(n) = anchors.get(&id) else {
                    return Err(ConfigError::Syntax {
                        file: file.to_string(),
                        line,
                        col,
                        message: "alias to an unknown anchor".into(),
                    });
                };
                nodes = nodes.saturating_add(count(n));
                if nodes > limits.max_nodes {
                    return Err(bomb(line, col));
                }
                Some((n.clone(), 0))
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                nodes += 1;
                if stack.len() >= limits.max_depth {
                    return Err(ConfigError::TooLarge {
                        file: file.to_string(),
                        line,
                        col,
                        what: format!("nesting deeper than {} levels", limits.max_depth),
                    });
                }
                let is_seq = matches!(ev, Event::SequenceStart(..));
                let n = Node {
                    kind: if is_seq {
                        Kind::Seq(Vec::new())
                    } else {
                        Kind::Map(Vec::new())
                    },
                    line,
                    col,
                };
                stack.push(if is_seq {
                    Frame::Seq(n, anchor)
                } else {
                    Frame::Map(n, anchor, None)
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(n, a)) | Some(Frame::Map(n, a, _)) => Some((n, a)),
                None => None,
            },
        };
        if nodes > limits.max_nodes {
            return Err(bomb(line, col));
        }
        let Some((node, anchor)) = done else { continue };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq(parent, _)) => {
                if let Kind::Seq(items) = &mut parent.kind {
                    items.push(node);
                }
            }
            Some(Frame::Map(parent, _, pending)) => match pending.take() {
                None => *pending = Some(key_of(file, node)?),
                Some(key) => {
                    if let Kind::Map(entries) = &mut parent.kind {
                        if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == key.name) {
                            return Err(ConfigError::Duplicate {
                                file: file.to_string(),
                                line: key.line,
                                col: key.col,
                                what: format!("key `{}`", key.name),
                                first: first.line,
                            });
                        }
                        entries.push((key, node));
                    }
                }
            },
        }
    }
    Ok(root.unwrap_or(Node {
        kind: Kind::Null,
        line: 1,
        col: 1,
    }))
}

fn key_of(file: &str, node: Node) -> Result<Key, ConfigError> {
    let name = match node.kind {
        Kind::Str(s) => s,
        Kind::Int(i) => i.to_string(),
        Kind::Bool(b) => b.to_string(),
        Kind::Float(f) => f.to_string(),
        Kind::Null => String::new(),
        Kind::Seq(_) | Kind::Map(_) => {
            return Err(ConfigError::Invalid {
                file: file.to_string(),
                line: node.line,
                col: node.col,
                message: "a mapping key must be a plain name, not a list or mapping".into(),
            })
        }
    };
    Ok(Key {
        name,
        line: node.line,
        col: node.col,
    })
}

fn count(n: &Node) -> usize {
    match &n.kind {
        Kind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Kind::Map(e) => 1 + e.iter().map(|(_, v)| 1 + count(v)).sum::<usize>(),
        _ => 1,
    }
}

/// YAML 1.2 core schema resolution of a plain scalar (what serde_yaml 0.9 does too).
fn plain_scalar(s: &str) -> Kind {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Kind::Null,
        "true" | "True" | "TRUE" => return Kind::Bool(true),
        "false" | "False" | "FALSE" => return Kind::Bool(false),
        _ => {}
    }
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let neg = s.starts_with('-');
    let int = if let Some(h) = unsigned.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = unsigned.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if unsigned.bytes().all(|b| b.is_ascii_digit()) && !unsigned.is_empty() {
        unsigned.parse::<i64>().ok()
    } else {
        None
    };
    if let Some(i) = int {
        return Kind::Int(if neg { -i } else { i });
    }
    let looks_float = unsigned
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && unsigned.bytes().any(|b| b.is_ascii_digit());
    if looks_float {
        if let Ok(f) = s.parse::<f64>() {
            return Kind::Float(f);
        }
    }
    Kind::Str(s.to_string())
}

impl Node {
    /// Convert to JSON (what templates see). Non-finite floats become strings.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            Kind::Null => Value::Null,
            Kind::Bool(b) => Value::Bool(*b),
            Kind::Int(i) => Value::from(*i),
            Kind::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(f.to_string())),
            Kind::Str(s) => Value::String(s.clone()),
            Kind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Kind::Map(e) => Value::Object(
                e.iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: YamlLimits = YamlLimits {
        max_nodes: 10_000,
        max_depth: 32,
    };

    #[test]
    fn positions_are_one_based() {
        let n = parse("f", "a: 1\nb:\n  c: x\n", L).unwrap();
        let Kind::Map(e) = n.kind else { panic!() };
        assert_eq!((e[1].0.line, e[1].0.col), (2, 1));
        let Kind::Map(inner) = &e[1].1.kind else {
            panic!()
        };
        assert_eq!((inner[0].0.line, inner[0].0.col), (3, 3));
        assert_eq!(inner[0].1.kind, Kind::Str("x".into()));
    }

    #[test]
    fn scalars_resolve_like_core_schema() {
        assert_eq!(plain_scalar("12"), Kind::Int(12));
        assert_eq!(plain_scalar("-0x10"), Kind::Int(-16));
        assert_eq!(plain_scalar("1.5"), Kind::Float(1.5));
        assert_eq!(plain_scalar("yes"), Kind::Str("yes".into()));
        assert_eq!(plain_scalar("10.0.0.1"), Kind::Str("10.0.0.1".into()));
        assert_eq!(plain_scalar("~"), Kind::Null);
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse("bomb.yaml", &text, L).unwrap_err().to_string();
        assert!(err.contains("bomb.yaml:"), "{err}");
    }
}
