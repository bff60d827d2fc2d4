//! On-disk layout of records. Fixed-width little-endian headers, then the raw bytes; no
//! self-description because the file format is private to this crate and versioned by table name.

use std::sync::Arc;

use bytes::Bytes;

use crate::{EventKind, KeyValue, StoreError};

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("corrupt {what} record"))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u64(&mut self, what: &str) -> Result<u64, StoreError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| corrupt(what))?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, StoreError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().map_err(|_| corrupt(what))?))
    }
    fn bytes(&mut self, what: &str) -> Result<&'a [u8], StoreError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
}

/// A live key in the first file format (`kv_v1`): `create_revision, mod_revision, value`. Read
/// only to migrate such a file.
pub fn decode_kv_v1(key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    let mut r = Reader(raw);
    let create_revision = r.u64("key")?;
    let mod_revision = r.u64("key")?;
    Ok(KeyValue { key: Arc::from(key), value: Bytes::copy_from_slice(r.0), create_revision, mod_revision })
}

/// One history record, keyed by its revision:
/// `kind, create_revision, prev_revision, key, value`.
///
/// Each value is written once, in the record of the write that made it: a live key points at its
/// newest record, and a record points at the one before it (`prev_revision`, 0 for none) instead
/// of repeating its value. A delete's record has an empty value: the deleted value is its
/// previous record's.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: EventKind,
    pub create_revision: u64,
    pub prev_revision: u64,
    pub key: &'a str,
    pub value: &'a [u8],
}

impl Record<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 8 + 4 + self.key.len() + self.value.len());
        out.push(match self.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.prev_revision.to_le_bytes());
        push_bytes(&mut out, self.key.as_bytes());
        out.extend_from_slice(self.value);
        out
    }

    pub fn decode(raw: &[u8]) -> Result<Record<'_>, StoreError> {
        let mut r = Reader(raw);
        let kind = match r.take(1, "history")?[0] {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            _ => return Err(corrupt("history")),
        };
        let create_revision = r.u64("history")?;
        let prev_revision = r.u64("history")?;
        let key = std::str::from_utf8(r.bytes("history")?).map_err(|_| corrupt("history key"))?;
        Ok(Record { kind, create_revision, prev_revision, key, value: r.0 })
    }
}

fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for record in [
            Record { kind: EventKind::Put, create_revision: 3, prev_revision: 0, key: "/a/b", value: b"new" },
            Record { kind: EventKind::Put, create_revision: 3, prev_revision: 5, key: "/a/b", value: b"" },
            Record { kind: EventKind::Delete, create_revision: 3, prev_revision: 9, key: "/a/b", value: b"" },
        ] {
            assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        }
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        assert!(decode_kv_v1("k", &[1, 2, 3]).is_err());
        assert!(Record::decode(&[0, 9, 0, 0, 0]).is_err());
        assert!(Record::decode(&[7]).is_err());
        let whole = Record { kind: EventKind::Put, create_revision: 1, prev_revision: 0, key: "/k", value: b"v" }.encode();
        for cut in 0..1 + 8 + 8 + 4 + 2 {
            assert!(Record::decode(&whole[..cut]).is_err(), "cut at {cut}");
        }
    }
}
