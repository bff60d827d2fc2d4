//! On-disk layout of records. Fixed-width little-endian headers, then the raw bytes; no
//! self-description because the file format is private to this crate and versioned by table name.

use std::sync::Arc;

use bytes::Bytes;

use crate::{Event, EventKind, KeyValue, StoreError};

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

/// A live key: `create_revision, mod_revision, value`.
pub fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

pub fn decode_kv(key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    let mut r = Reader(raw);
    let create_revision = r.u64("key")?;
    let mod_revision = r.u64("key")?;
    Ok(KeyValue { key: Arc::from(key), value: Bytes::copy_from_slice(r.0), create_revision, mod_revision })
}

/// A history entry, keyed by its revision:
/// `kind, key, create_revision, value, [prev_create, prev_mod, prev_value]`.
pub fn encode_event(event: &Event) -> Vec<u8> {
    let prev_len = event.prev.as_ref().map_or(0, |p| 16 + p.value.len());
    let mut out = Vec::with_capacity(1 + 4 + event.kv.key.len() + 8 + 4 + event.kv.value.len() + 1 + prev_len);
    out.push(match event.kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    push_bytes(&mut out, event.kv.key.as_bytes());
    out.extend_from_slice(&event.kv.create_revision.to_le_bytes());
    push_bytes(&mut out, &event.kv.value);
    match &event.prev {
        None => out.push(0),
        Some(prev) => {
            out.push(1);
            out.extend_from_slice(&prev.create_revision.to_le_bytes());
            out.extend_from_slice(&prev.mod_revision.to_le_bytes());
            out.extend_from_slice(&prev.value);
        }
    }
    out
}

fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

pub fn decode_event(revision: u64, raw: &[u8]) -> Result<Event, StoreError> {
    let mut r = Reader(raw);
    let kind = match r.take(1, "event")?[0] {
        0 => EventKind::Put,
        1 => EventKind::Delete,
        _ => return Err(corrupt("event")),
    };
    let key = std::str::from_utf8(r.bytes("event")?).map_err(|_| corrupt("event key"))?;
    let key: Arc<str> = Arc::from(key);
    let create_revision = r.u64("event")?;
    let value = Bytes::copy_from_slice(r.bytes("event")?);
    let prev = match r.take(1, "event")?[0] {
        0 => None,
        _ => {
            let create_revision = r.u64("event")?;
            let mod_revision = r.u64("event")?;
            Some(KeyValue { key: key.clone(), value: Bytes::copy_from_slice(r.0), create_revision, mod_revision })
        }
    };
    Ok(Event { kind, kv: KeyValue { key, value, create_revision, mod_revision: revision }, prev })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips_with_and_without_prev() {
        let kv = KeyValue { key: "/a/b".into(), value: Bytes::from_static(b"new"), create_revision: 3, mod_revision: 9 };
        let prev = KeyValue { key: "/a/b".into(), value: Bytes::from_static(b"old"), create_revision: 3, mod_revision: 5 };
        for event in [
            Event { kind: EventKind::Put, kv: kv.clone(), prev: None },
            Event { kind: EventKind::Delete, kv: kv.clone(), prev: Some(prev) },
        ] {
            let back = decode_event(9, &encode_event(&event)).unwrap();
            assert_eq!(back.kind, event.kind);
            assert_eq!(back.kv, event.kv);
            assert_eq!(back.prev, event.prev);
        }
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        assert!(decode_kv("k", &[1, 2, 3]).is_err());
        assert!(decode_event(1, &[0, 9, 0, 0, 0]).is_err());
        assert!(decode_event(1, &[7]).is_err());
    }
}
