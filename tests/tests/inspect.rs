//! The maps as an operator sees them: `bpftool map dump` on the pins of a
//! running agent names every field (the maps are BTF maps), with values
//! that match the lab; pins of the layout from before BTF are refused.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    process::Command,
};

use lab::{apiserver::PORT, bed::Bed, require_root};
use lb_common::{flow::DIR_FORWARD, maps};
use serde_json::Value;

const BACKENDS: [&str; 3] = ["api1", "api2", "api3"];

/// `bpftool -j <args> pinned <path>`, parsed.
fn bpftool_json(args: &[&str], path: &Path) -> Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .arg("pinned")
        .arg(path)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool -j {args:?} pinned {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bpftool -j {args:?} printed something that is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The entries of `bpftool -j map dump`, as bpftool formats them from the
/// map's BTF: `{"key": .., "value": ..}` with named fields. Without BTF
/// bpftool prints only hex bytes, and there is no "formatted" part.
fn dump(path: &Path) -> Vec<Value> {
    let v = bpftool_json(&["map", "dump"], path);
    v.as_array()
        .unwrap_or_else(|| panic!("bpftool map dump: not a list: {v}"))
        .iter()
        .map(|e| {
            e.get("formatted").cloned().unwrap_or_else(|| {
                panic!(
                    "bpftool printed {} without field names (no BTF): {e}",
                    path.display()
                )
            })
        })
        .collect()
}

/// A field bpftool prints as a list of byte values (addresses and ports,
/// in network order as the data plane keeps them).
fn bytes<const N: usize>(v: &Value, field: &str) -> [u8; N] {
    let list = v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no byte list {field:?} in {v}"));
    let bytes: Vec<u8> = list
        .iter()
        .map(|b| b.as_u64().expect("a byte") as u8)
        .collect();
    bytes
        .try_into()
        .unwrap_or_else(|_| panic!("{field:?} is not {N} bytes in {v}"))
}

fn socket(v: &Value, ip: &str, port: &str) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(bytes::<4>(v, ip)),
        u16::from_be_bytes(bytes::<2>(v, port)),
    )
}

fn number(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {field:?} in {v}"))
}

#[test]
fn bpftool_dumps_backends_and_flows_with_named_fields() {
    let bed = Bed::start(&BACKENDS, &[]);
    // A held connection per backend: their FLOWS entries stay put.
    let held = bed.hold(&BACKENDS);
    let pins = &bed.agent.pin_dir;

    for name in maps::WITH_BTF {
        let info = bpftool_json(&["map", "show"], &pins.join(name));
        assert!(
            info["btf_id"].as_u64().is_some_and(|id| id > 0),
            "{name} has no BTF: {info}"
        );
    }

    // BACKENDS: id → {ip, port, flags}; the ids in use are the lab's
    // backends, the rest all zero.
    let backends = dump(&pins.join(maps::BACKENDS));
    let mut by_id = std::collections::BTreeMap::new();
    for e in &backends {
        let v = &e["value"];
        for field in ["ip", "port", "flags"] {
            assert!(
                v.get(field).is_some(),
                "BACKENDS value without {field:?}: {e}"
            );
        }
        let addr = socket(v, "ip", "port");
        if !addr.ip().is_unspecified() {
            by_id.insert(number(e, "key"), addr);
        }
    }
    let mut want: Vec<SocketAddrV4> = bed.backends.values().copied().collect();
    let mut got: Vec<SocketAddrV4> = by_id.values().copied().collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "BACKENDS per bpftool: {by_id:?}");

    // FLOWS: each held connection's client → VIP entry names its backend
    // (by id, and as the rewritten destination), and a clock reading.
    let flows = dump(&pins.join(maps::FLOWS));
    let vip = match bed.vip() {
        SocketAddr::V4(v) => v,
        other => panic!("an IPv4 VIP, not {other}"),
    };
    for h in held.values() {
        let local = match h.conn.as_ref().expect("a held connection").local {
            SocketAddr::V4(a) => a,
            other => panic!("an IPv4 client address, not {other}"),
        };
        let entry = flows
            .iter()
            .find(|e| {
                let k = &e["key"];
                socket(k, "src", "sport") == local && socket(k, "dst", "dport") == vip
            })
            .unwrap_or_else(|| {
                panic!("no FLOWS entry {local} → {vip} in bpftool's dump: {flows:#?}")
            });
        let (k, v) = (&entry["key"], &entry["value"]);
        for field in ["src", "dst", "sport", "dport", "proto"] {
            assert!(k.get(field).is_some(), "FlowKey without {field:?}: {k}");
        }
        for field in [
            "last_seen",
            "hop_at",
            "new_src",
            "new_dst",
            "new_sport",
            "new_dport",
            "backend",
            "service",
            "hop",
            "tcp_seen",
            "dir",
        ] {
            assert!(v.get(field).is_some(), "Flow without {field:?}: {v}");
        }
        let backend = bed.backends[&h.backend];
        assert_eq!(number(k, "proto"), 6, "{entry}");
        assert_eq!(number(v, "dir"), u64::from(DIR_FORWARD), "{entry}");
        assert_eq!(
            by_id.get(&number(v, "backend")),
            Some(&backend),
            "the flow of the connection held to {} names backend {} (BACKENDS: {by_id:?}): {entry}",
            h.backend,
            number(v, "backend")
        );
        assert_eq!(socket(v, "new_dst", "new_dport"), backend, "{entry}");
        assert_eq!(
            *socket(v, "new_src", "new_sport").ip(),
            bed.lab.host("lb1").ip,
            "NATed from lb1's address: {entry}"
        );
        assert!(number(v, "last_seen") > 0, "{entry}");
        assert_eq!(backend.port(), PORT);
    }
}

/// A data plane pinned before the maps had BTF (same types and sizes, no
/// BTF) is refused with what differs, and left as it was.
#[test]
fn pins_without_btf_are_refused_and_kept() {
    require_root();
    let r = lab::testrun::agent_on_foreign_flows_pin(
        "pins_without_btf",
        "hash",
        size_of::<lb_common::flow::FlowKey>(),
        size_of::<lb_common::flow::Flow>(),
    );
    assert!(
        !r.succeeded,
        "xdplb accepted pins without BTF:\n{}",
        r.output
    );
    assert!(
        r.output.contains("made by another xdplb version")
            && r.output.contains("FLOWS")
            && r.output.contains("no BTF"),
        "the error does not say which pin and why:\n{}",
        r.output
    );
    assert!(r.kept, "the FLOWS pin without BTF was removed");
}
