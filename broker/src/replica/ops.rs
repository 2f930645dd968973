//! What travels from a session's holder to its replica: the holder's store ops on the session
//! tables, encoded (`[u32 n] n × ([u8 kind][u8 table][bytes key][bytes value])`, `bytes` = u32
//! length + bytes), and how the replica keeps them: in its `standby` table, under a one-byte
//! kind prefix ([`standby_key`]), so a copy never mixes with the sessions the node holds
//! itself. Pure: no I/O, no locks; fuzzed through [`decode`].

use crate::message::{put, Rd};
use crate::store::{Op, Table};

/// Standby rows: who holds the session (`[OWNER] client_id` → holder node name).
pub const OWNER: u8 = 0;
/// Standby rows: the session record (`[RECORD] client_id`).
pub const RECORD: u8 = 1;
/// Standby rows: one subscription (`[SUB] client_id 0x00 filter`).
pub const SUB: u8 = 2;
/// Standby rows: one stored message (`[MESSAGE] client_id 0x00 seq`).
pub const MESSAGE: u8 = 3;

/// Most ops one batch may carry (a snapshot of a session at its queue bound fits).
const MAX_OPS: usize = 1 << 20;

/// The client id a session-table key belongs to (`None` for other tables or a bad key).
pub fn client_of(op: &Op) -> Option<&[u8]> {
    let (table, key) = match op {
        Op::Put { table, key, .. } | Op::Delete { table, key } => (*table, key.as_slice()),
        Op::DeletePrefix { table, prefix } => (*table, prefix.as_slice()),
    };
    match table {
        Table::Sessions => Some(key),
        Table::Subscriptions | Table::Messages => {
            let end = key.iter().position(|b| *b == 0)?;
            Some(&key[..end])
        }
        Table::Retained | Table::Meta | Table::Standby => None,
    }
}

fn table_code(t: Table) -> Option<u8> {
    match t {
        Table::Sessions => Some(RECORD),
        Table::Subscriptions => Some(SUB),
        Table::Messages => Some(MESSAGE),
        Table::Retained | Table::Meta | Table::Standby => None,
    }
}

/// Appends the encoding of `ops` (session tables only; others are skipped).
pub fn encode<'a>(ops: impl IntoIterator<Item = &'a Op>, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut n = 0u32;
    for op in ops {
        let Some(code) = table_code(op_table(op)) else {
            continue;
        };
        match op {
            Op::Put { key, value, .. } => {
                out.extend_from_slice(&[1, code]);
                put(out, key);
                put(out, value);
            }
            Op::Delete { key, .. } => {
                out.extend_from_slice(&[2, code]);
                put(out, key);
                put(out, &[]);
            }
            Op::DeletePrefix { prefix, .. } => {
                out.extend_from_slice(&[3, code]);
                put(out, prefix);
                put(out, &[]);
            }
        }
        n += 1;
    }
    out[at..at + 4].copy_from_slice(&n.to_be_bytes());
}

fn op_table(op: &Op) -> Table {
    match op {
        Op::Put { table, .. } | Op::Delete { table, .. } | Op::DeletePrefix { table, .. } => *table,
    }
}

/// One decoded op: kind (1 put, 2 delete, 3 delete prefix), standby kind code, key, value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wire {
    /// 1 put, 2 delete, 3 delete every key with this prefix.
    pub kind: u8,
    /// [`RECORD`], [`SUB`] or [`MESSAGE`].
    pub code: u8,
    /// The holder's key (or prefix).
    pub key: Vec<u8>,
    /// The value of a put.
    pub value: Vec<u8>,
}

impl Wire {
    /// The client id the op belongs to (`None`: a key with no client id in it).
    pub fn client(&self) -> Option<&[u8]> {
        if self.code == RECORD {
            return Some(&self.key);
        }
        let end = self.key.iter().position(|b| *b == 0)?;
        Some(&self.key[..end])
    }

    /// The op on this node's standby table.
    pub fn standby_op(&self) -> Op {
        let key = standby_key(self.code, &self.key);
        match self.kind {
            1 => Op::Put {
                table: Table::Standby,
                key,
                value: self.value.clone(),
            },
            2 => Op::Delete {
                table: Table::Standby,
                key,
            },
            _ => Op::DeletePrefix {
                table: Table::Standby,
                prefix: key,
            },
        }
    }
}

/// Decodes a batch; `None` for anything malformed (the whole batch is refused, not acked).
pub fn decode(b: &[u8]) -> Option<Vec<Wire>> {
    let mut r = Rd(b);
    let n = r.u32()? as usize;
    if n > MAX_OPS {
        return None;
    }
    let mut v = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let kind = r.u8()?;
        let code = r.u8()?;
        if !(1..=3).contains(&kind) || !(RECORD..=MESSAGE).contains(&code) {
            return None;
        }
        let key = r.bytes()?.to_vec();
        let value = r.bytes()?.to_vec();
        // a delete of a whole kind (an empty prefix) would erase every standby copy
        if key.is_empty() || (kind == 3 && code == RECORD) {
            return None;
        }
        v.push(Wire {
            kind,
            code,
            key,
            value,
        });
    }
    r.0.is_empty().then_some(v)
}

/// The standby-table key of a holder's row.
pub fn standby_key(code: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(code);
    k.extend_from_slice(key);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<Op> {
        vec![
            Op::Put {
                table: Table::Sessions,
                key: b"dev-1".to_vec(),
                value: vec![1, 2],
            },
            Op::Put {
                table: Table::Retained,
                key: b"t".to_vec(),
                value: vec![9],
            },
            Op::Delete {
                table: Table::Messages,
                key: b"dev-1\0\0\0\0\0\0\0\0\x07".to_vec(),
            },
            Op::DeletePrefix {
                table: Table::Subscriptions,
                prefix: b"dev-1\0".to_vec(),
            },
        ]
    }

    #[test]
    fn round_trip_skips_other_tables() {
        let mut b = Vec::new();
        encode(&ops(), &mut b);
        let w = decode(&b).unwrap();
        assert_eq!(w.len(), 3);
        assert!(w.iter().all(|w| w.client() == Some(&b"dev-1"[..])));
        assert_eq!(
            w[0].standby_op(),
            Op::Put {
                table: Table::Standby,
                key: b"\x01dev-1".to_vec(),
                value: vec![1, 2]
            }
        );
        assert_eq!(
            w[2].standby_op(),
            Op::DeletePrefix {
                table: Table::Standby,
                prefix: b"\x02dev-1\0".to_vec()
            }
        );
        for i in 0..b.len() {
            assert_eq!(decode(&b[..i]), None, "prefix {i}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode(&long), None);
    }

    #[test]
    fn client_ids_of_ops() {
        let o = ops();
        assert_eq!(client_of(&o[0]), Some(&b"dev-1"[..]));
        assert_eq!(client_of(&o[1]), None);
        assert_eq!(client_of(&o[2]), Some(&b"dev-1"[..]));
        assert_eq!(client_of(&o[3]), Some(&b"dev-1"[..]));
    }

    #[test]
    fn an_empty_prefix_delete_is_refused() {
        let mut b = Vec::new();
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&[3, SUB]);
        put(&mut b, b"");
        put(&mut b, b"");
        assert_eq!(decode(&b), None);
    }
}
