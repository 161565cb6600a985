//! Whole-map reads and bulk deletes in batches (`BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_DELETE_BATCH`, Linux 5.6+).
//!
//! aya 0.14 walks a map one element at a time: `get_next_key` then a
//! lookup, two syscalls per element. The ageing sweep walks the whole flow
//! table every few seconds; at 100k flows that walk alone was a fifth of a
//! CPU-second, on the LB's own CPU. A batch moves thousands of elements
//! per syscall.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use bytemuck::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Elements per syscall. A hash map's batch never splits a bucket, so this
/// must exceed the longest bucket chain (a handful, at any fill).
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`; the kernel zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the size
    // passed; the pointers in it are valid for `count` elements (callers).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every (key, value) of a hash map, read in batches. Entries added or
/// removed meanwhile may or may not be seen, as with any walk.
pub fn lookup_all<K: Pod, V: Pod>(map: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut keys = vec![K::zeroed(); CHUNK];
    let mut values = vec![V::zeroed(); CHUNK];
    let mut out = Vec::new();
    // A hash map's position token is a bucket index (u32).
    let mut token: u32 = 0;
    let mut first = true;
    loop {
        let mut next: u32 = 0;
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token as *const u32 as u64
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let rc = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        // The kernel reports how many it filled, also with ENOENT (the end).
        let n = (attr.count as usize).min(CHUNK);
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match rc {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        token = next;
        first = false;
    }
}

/// Deletes `keys` in batches; returns how many were there to delete (a key
/// someone else removed meanwhile is skipped).
pub fn delete<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let n = rest.len().min(CHUNK);
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: n as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let rc = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        // Deleted in order up to the first failure.
        let done = (attr.count as usize).min(n);
        deleted += done;
        match rc {
            Ok(()) => rest = &rest[n..],
            // rest[done] is gone already: step over it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => rest = &rest[done + 1..],
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// A kernel map for tests: made by bpftool, pinned in a bpffs directory
/// of its own, which goes when this is dropped. Needs root.
#[cfg(test)]
pub struct TestMap {
    dir: String,
    pub data: Option<aya::maps::MapData>,
}

#[cfg(test)]
impl TestMap {
    pub fn hash(name: &str, key: usize, value: usize, entries: u32) -> TestMap {
        TestMap::new("hash", name, key, value, entries)
    }

    /// A map of bpftool's `kind` (`hash`, `lru_hash`).
    pub fn new(kind: &str, name: &str, key: usize, value: usize, entries: u32) -> TestMap {
        // SAFETY: no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "needs root (creates a BPF map)"
        );
        let dir = format!("/sys/fs/bpf/xdplb-{name}-test-{}", std::process::id());
        std::fs::create_dir_all(&dir).unwrap();
        let mut map = TestMap { dir, data: None };
        let pin = format!("{}/{name}", map.dir);
        let made = std::process::Command::new("bpftool")
            .args(["map", "create", &pin, "type", kind])
            .args(["key", &key.to_string(), "value", &value.to_string()])
            .args(["entries", &entries.to_string(), "name", name])
            .status()
            .unwrap();
        assert!(made.success(), "bpftool map create {pin} failed");
        map.data = Some(aya::maps::MapData::from_pin(&pin).unwrap());
        map
    }

    pub fn take<K: aya::Pod, V: aya::Pod>(
        &mut self,
    ) -> aya::maps::HashMap<aya::maps::MapData, K, V> {
        let data = self.data.take().expect("taken once");
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap()
    }
}

#[cfg(test)]
impl Drop for TestMap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use aya::maps::IterableMap as _;

    use super::*;

    /// A real kernel hash map, 10 000 entries: all read back in batches;
    /// then half deleted in batches, with keys already gone among them.
    #[test]
    fn reads_and_deletes_a_kernel_hash_map_in_batches() {
        let mut m = TestMap::hash("batch", 8, 8, 16384);
        let mut map = m.take::<u64, u64>();
        for k in 0..10_000u64 {
            map.insert(k, k * 3, 0).unwrap();
        }
        let fd = map.map().fd().as_fd();
        let mut all: Vec<(u64, u64)> = lookup_all(fd).unwrap();
        all.sort_unstable();
        assert_eq!(all.len(), 10_000);
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, &(k, v))| k == i as u64 && v == 3 * k)
        );

        // Even keys, and 100 keys that were never there spread among them.
        let mut doomed: Vec<u64> = (0..10_000).filter(|k| k % 2 == 0).collect();
        for i in 0..100 {
            doomed.insert(i * 50, 1_000_000 + i as u64);
        }
        assert_eq!(delete(fd, &doomed).unwrap(), 5_000);
        let mut left: Vec<u64> = lookup_all::<u64, u64>(fd)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        left.sort_unstable();
        assert_eq!(left, (0..10_000).filter(|k| k % 2 == 1).collect::<Vec<_>>());
        assert_eq!(delete::<u64>(fd, &[]).unwrap(), 0);
    }
}
