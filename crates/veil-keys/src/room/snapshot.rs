//! The room's public group state as bytes (specs/key-service.md §5): openmls's own storage for
//! the group, an in-memory map, serialised in key order so equal states serialise equally and a
//! reload is `PublicGroup::load` (KDS-DUR-03).

use openmls_memory_storage::MemoryStorage;

use crate::error::KdsError;

/// The storage as bytes: `count:u32` then, sorted by key, `len:u32 key len:u32 value`
/// (big-endian).
pub(super) fn snapshot(storage: &MemoryStorage) -> Result<Vec<u8>, KdsError> {
    let values = storage
        .values
        .read()
        .map_err(|_| KdsError::internal("room storage lock poisoned"))?;
    let mut entries: Vec<(&Vec<u8>, &Vec<u8>)> = values.iter().collect();
    entries.sort();
    let len = |n: usize| u32::try_from(n).map_err(|_| KdsError::internal("entry too big"));
    let mut out = Vec::new();
    out.extend_from_slice(&len(entries.len())?.to_be_bytes());
    for (k, v) in entries {
        out.extend_from_slice(&len(k.len())?.to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&len(v.len())?.to_be_bytes());
        out.extend_from_slice(v);
    }
    Ok(out)
}

/// The storage [`snapshot`] wrote.
///
/// # Errors
/// [`KdsError::Storage`] for truncated bytes or trailing bytes.
pub(super) fn restore_storage(mut bytes: &[u8]) -> Result<MemoryStorage, KdsError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], KdsError> {
        if b.len() < n {
            return Err(KdsError::storage("room state is truncated"));
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Ok(head)
    }
    fn take_len(b: &mut &[u8]) -> Result<usize, KdsError> {
        let raw: [u8; 4] = take(b, 4)?.try_into().unwrap_or_default();
        Ok(u32::from_be_bytes(raw) as usize)
    }
    let count = take_len(&mut bytes)?;
    let mut map = std::collections::HashMap::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let k = take_len(&mut bytes)?;
        let k = take(&mut bytes, k)?.to_vec();
        let v = take_len(&mut bytes)?;
        let v = take(&mut bytes, v)?.to_vec();
        map.insert(k, v);
    }
    if !bytes.is_empty() {
        return Err(KdsError::storage("room state has trailing bytes"));
    }
    Ok(MemoryStorage {
        values: std::sync::RwLock::new(map),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(entries: &[(&[u8], &[u8])]) -> MemoryStorage {
        let s = MemoryStorage::default();
        {
            let mut v = s.values.write().unwrap();
            for (k, val) in entries {
                v.insert(k.to_vec(), val.to_vec());
            }
        }
        s
    }

    #[test]
    fn equal_states_serialise_equally_and_round_trip() {
        let a = storage(&[(b"k1", b"one"), (b"k2", b""), (b"", b"empty key")]);
        let b = storage(&[(b"", b"empty key"), (b"k2", b""), (b"k1", b"one")]);
        let bytes = snapshot(&a).unwrap();
        assert_eq!(
            bytes,
            snapshot(&b).unwrap(),
            "insertion order does not matter"
        );
        let back = restore_storage(&bytes).unwrap();
        assert_eq!(*back.values.read().unwrap(), *a.values.read().unwrap());
        assert_eq!(snapshot(&back).unwrap(), bytes);
        assert_eq!(
            snapshot(&MemoryStorage::default()).unwrap(),
            [0, 0, 0, 0],
            "an empty state is a zero count"
        );
    }

    #[test]
    fn truncated_or_trailing_bytes_are_storage_errors() {
        let bytes = snapshot(&storage(&[(b"key", b"value")])).unwrap();
        for cut in 0..bytes.len() {
            let e = restore_storage(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(&e, KdsError::Storage { why: m, .. } if m.contains("truncated")),
                "{cut}: {e}"
            );
        }
        let mut long = bytes;
        long.push(0);
        let e = restore_storage(&long).unwrap_err();
        assert!(
            matches!(&e, KdsError::Storage { why: m, .. } if m.contains("trailing")),
            "{e}"
        );
    }
}
