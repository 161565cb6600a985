use super::*;

const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 31, 88);
const VIP2: Ipv4Addr = Ipv4Addr::new(192, 168, 31, 89);
const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 31, 70);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 31, 71);
const PEER2: Ipv4Addr = Ipv4Addr::new(192, 168, 31, 72);

/// The ones'-complement sum of RFC 1071 computed another way than the
/// code under test: even and odd bytes summed apart, as the RFC's
/// "byte order independence" (§2(B)) allows, then joined and folded.
fn independent_checksum(parts: &[&[u8]]) -> u16 {
    let bytes = parts.concat();
    let (mut high, mut low) = (0u64, 0u64);
    for (i, b) in bytes.iter().enumerate() {
        if i % 2 == 0 {
            high += u64::from(*b);
        } else {
            low += u64::from(*b);
        }
    }
    let mut sum = (high << 8) + low;
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn v3_advert() -> Advert {
    Advert {
        version: Version::V3,
        vrid: 51,
        priority: 100,
        interval_cs: 100,
        addresses: vec![VIP],
        auth: Auth::None,
    }
}

fn v2_advert() -> Advert {
    Advert {
        version: Version::V2,
        ..v3_advert()
    }
}

fn expect(version: Version) -> Expect<'static> {
    Expect {
        version,
        vrid: 51,
        interval_cs: 100,
        addresses: &[VIP],
        auth: Auth::None,
        unicast_peers: &[],
        check_unicast_src: false,
        own_address: ME,
    }
}

fn mcast(src: Ipv4Addr) -> Ipv4Meta {
    Ipv4Meta {
        src,
        dst: MULTICAST_GROUP,
        ttl: TTL,
    }
}

/// Recomputes the checksum after a test edited the bytes, so the edit and
/// not the checksum is what the decoder sees.
fn reseal(version: Version, ip: &Ipv4Meta, bytes: &mut [u8]) {
    bytes[6..8].copy_from_slice(&[0, 0]);
    let sum = checksum(version, ip.src, ip.dst, bytes);
    bytes[6..8].copy_from_slice(&sum.to_be_bytes());
}

#[test]
fn v3_advert_matches_a_hand_computed_packet() {
    // vrid 51, priority 100, 100 cs, 192.168.31.88, from 192.168.31.71 to
    // the group. By hand, 16-bit words:
    //   pseudo-header c0a8 1f47 e000 0012 0070 000c
    //   VRRP          3133 6401 0064 0000 c0a8 1f58
    //   sum 0x33615, folded 0x3618, complemented 0xc9e7.
    let ip = mcast(PEER);
    let bytes = v3_advert().encode(ip.src, ip.dst).unwrap();
    let expected: [u8; 12] = [0x31, 51, 100, 1, 0x00, 100, 0xc9, 0xe7, 192, 168, 31, 88];
    assert_eq!(bytes, expected);
    let pseudo = [192, 168, 31, 71, 224, 0, 0, 18, 0, 112, 0, 12];
    let mut zeroed = expected;
    zeroed[6..8].copy_from_slice(&[0, 0]);
    assert_eq!(independent_checksum(&[&pseudo, &zeroed]), 0xc9e7);
    // Summed with the checksum in place, a good message folds to zero.
    assert_eq!(independent_checksum(&[&pseudo, &expected]), 0);
    assert_eq!(decode(&ip, &bytes, &expect(Version::V3)), Ok(v3_advert()));
}

#[test]
fn v3_unicast_checksum_uses_the_peer_as_destination() {
    // Same advert sent to a unicast peer: the pseudo-header carries the
    // peer, not the group (keepalived without unicast_chksum_compat).
    let bytes = v3_advert().encode(PEER, PEER2).unwrap();
    let pseudo = [192, 168, 31, 71, 192, 168, 31, 72, 0, 112, 0, 12];
    let mut zeroed = bytes.clone();
    zeroed[6..8].copy_from_slice(&[0, 0]);
    let sum = independent_checksum(&[&pseudo, &zeroed]);
    assert_eq!(sum, 0xca09);
    assert_eq!(bytes[6..8], sum.to_be_bytes());
}

#[test]
fn v2_advert_matches_a_hand_computed_packet() {
    // v2 sums the VRRP message alone, auth data included:
    //   2133 6401 0001 0000 c0a8 1f58 0000 0000 0000 0000
    //   sum 0x16535, folded 0x6536, complemented 0x9ac9.
    let bytes = v2_advert().encode(PEER, MULTICAST_GROUP).unwrap();
    let expected: [u8; 20] = [
        0x21, 51, 100, 1, 0, 1, 0x9a, 0xc9, 192, 168, 31, 88, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(bytes, expected);
    assert_eq!(independent_checksum(&[&expected]), 0);
    // No pseudo-header: the same bytes whatever the addresses.
    assert_eq!(v2_advert().encode(ME, PEER2).unwrap(), expected);
}

#[test]
fn round_trips_v2_and_v3_with_several_addresses() {
    let addrs = vec![VIP, VIP2, Ipv4Addr::new(10, 0, 0, 1)];
    for version in [Version::V2, Version::V3] {
        let advert = Advert {
            version,
            vrid: 7,
            priority: 254,
            interval_cs: 300,
            addresses: addrs.clone(),
            auth: Auth::None,
        };
        let ip = mcast(PEER);
        let bytes = advert.encode(ip.src, ip.dst).unwrap();
        assert_eq!(bytes.len(), advert.encoded_len());
        let exp = Expect {
            vrid: 7,
            interval_cs: 300,
            addresses: &addrs,
            ..expect(version)
        };
        assert_eq!(decode(&ip, &bytes, &exp), Ok(advert), "{version:?}");
    }
}

#[test]
fn round_trips_v2_with_a_password_and_priority_zero() {
    let advert = Advert {
        priority: PRIORITY_STOP,
        auth: Auth::password("secret"),
        ..v2_advert()
    };
    let ip = mcast(PEER);
    let bytes = advert.encode(ip.src, ip.dst).unwrap();
    assert_eq!(&bytes[4..6], &[1, 1], "auth type 1, 1 s");
    assert_eq!(&bytes[12..], b"secret\0\0");
    let exp = Expect {
        auth: Auth::password("secret"),
        ..expect(Version::V2)
    };
    assert_eq!(decode(&ip, &bytes, &exp), Ok(advert));
}

#[test]
fn password_is_cut_or_zero_padded_to_eight_bytes() {
    assert_eq!(Auth::password("secret"), Auth::Pass(*b"secret\0\0"));
    assert_eq!(Auth::password("12345678"), Auth::Pass(*b"12345678"));
    assert_eq!(Auth::password("longpassword"), Auth::Pass(*b"longpass"));
    assert_eq!(Auth::password(""), Auth::Pass([0; 8]));
    // As keepalived truncates both ends, passwords alike in their first
    // eight bytes interoperate.
    let ip = mcast(PEER);
    let sent = Advert {
        auth: Auth::password("longpassword"),
        ..v2_advert()
    };
    let bytes = sent.encode(ip.src, ip.dst).unwrap();
    assert_eq!(&bytes[12..], b"longpass");
    let exp = Expect {
        auth: Auth::password("longpass-other"),
        ..expect(Version::V2)
    };
    assert!(decode(&ip, &bytes, &exp).is_ok());
    assert_eq!(format!("{:?}", Auth::password("secret")), "Pass(..)");
}

#[test]
fn encode_refuses_what_the_wire_cannot_carry() {
    let v2_half = Advert {
        interval_cs: 150,
        ..v2_advert()
    };
    assert!(matches!(
        v2_half.encode(PEER, MULTICAST_GROUP),
        Err(EncodeError::IntervalOutOfRange { .. })
    ));
    let v2_long = Advert {
        interval_cs: 25600,
        ..v2_advert()
    };
    assert!(v2_long.encode(PEER, MULTICAST_GROUP).is_err());
    let v3_long = Advert {
        interval_cs: 4096,
        ..v3_advert()
    };
    assert!(v3_long.encode(PEER, MULTICAST_GROUP).is_err());
    let v3_auth = Advert {
        auth: Auth::password("x"),
        ..v3_advert()
    };
    assert_eq!(
        v3_auth.encode(PEER, MULTICAST_GROUP),
        Err(EncodeError::AuthInV3)
    );
    let many = Advert {
        addresses: vec![VIP; 256],
        ..v3_advert()
    };
    assert_eq!(
        many.encode(PEER, MULTICAST_GROUP),
        Err(EncodeError::TooManyAddresses(256))
    );
    // The largest v3 interval fits in 12 bits and leaves the reserved bits zero.
    let v3_max = Advert {
        interval_cs: 4095,
        ..v3_advert()
    };
    assert_eq!(
        &v3_max.encode(PEER, MULTICAST_GROUP).unwrap()[4..6],
        &[0x0f, 0xff]
    );
}

#[test]
fn v3_reserved_interval_bits_are_ignored() {
    let ip = mcast(PEER);
    let mut bytes = v3_advert().encode(ip.src, ip.dst).unwrap();
    bytes[4] |= 0xf0;
    reseal(Version::V3, &ip, &mut bytes);
    assert_eq!(
        decode(&ip, &bytes, &expect(Version::V3))
            .unwrap()
            .interval_cs,
        100
    );
}

#[test]
fn v3_accepts_another_interval_and_reports_it() {
    // RFC 5798 §6.4.2: the backup adopts it, so it is not a reason to drop.
    let ip = mcast(PEER);
    let advert = Advert {
        interval_cs: 35,
        ..v3_advert()
    };
    let bytes = advert.encode(ip.src, ip.dst).unwrap();
    assert_eq!(
        decode(&ip, &bytes, &expect(Version::V3))
            .unwrap()
            .interval_cs,
        35
    );
}

#[test]
fn address_order_does_not_matter() {
    let ip = mcast(PEER);
    let advert = Advert {
        addresses: vec![VIP2, VIP],
        ..v3_advert()
    };
    let bytes = advert.encode(ip.src, ip.dst).unwrap();
    let exp = Expect {
        addresses: &[VIP, VIP2],
        ..expect(Version::V3)
    };
    assert_eq!(
        decode(&ip, &bytes, &exp).unwrap().addresses,
        vec![VIP2, VIP]
    );
}

/// Decodes a v3 advert from PEER to the group after `edit`, resealed.
fn v3_edited(edit: impl FnOnce(&mut Vec<u8>)) -> Result<Advert, Reject> {
    let ip = mcast(PEER);
    let mut bytes = v3_advert().encode(ip.src, ip.dst).unwrap();
    edit(&mut bytes);
    if bytes.len() >= HEADER_LEN {
        reseal(Version::V3, &ip, &mut bytes);
    }
    decode(&ip, &bytes, &expect(Version::V3))
}

#[test]
fn rejects_truncated_and_too_long() {
    assert_eq!(v3_edited(|b| b.truncate(7)), Err(Reject::Truncated));
    assert_eq!(v3_edited(|b| b.truncate(10)), Err(Reject::Truncated));
    // The count says two addresses, one is there.
    assert_eq!(v3_edited(|b| b[3] = 2), Err(Reject::Truncated));
    assert_eq!(
        v3_edited(|b| b.extend_from_slice(&[0; 4])),
        Err(Reject::TooLong)
    );
    // A v2 message without its 8 auth bytes.
    let ip = mcast(PEER);
    let bytes = v2_advert().encode(ip.src, ip.dst).unwrap();
    assert_eq!(
        decode(&ip, &bytes[..12], &expect(Version::V2)),
        Err(Reject::Truncated)
    );
}

#[test]
fn rejects_bad_ttl_on_multicast_only() {
    let ip = Ipv4Meta {
        ttl: 254,
        ..mcast(PEER)
    };
    let bytes = v3_advert().encode(ip.src, ip.dst).unwrap();
    assert_eq!(
        decode(&ip, &bytes, &expect(Version::V3)),
        Err(Reject::BadTtl)
    );
    // Unicast adverts may be routed: keepalived skips the TTL check.
    let uni = Ipv4Meta {
        src: PEER,
        dst: ME,
        ttl: 62,
    };
    let bytes = v3_advert().encode(uni.src, uni.dst).unwrap();
    let exp = Expect {
        unicast_peers: &[PEER],
        ..expect(Version::V3)
    };
    assert!(decode(&uni, &bytes, &exp).is_ok());
}

#[test]
fn rejects_the_other_version() {
    let ip = mcast(PEER);
    let v2 = v2_advert().encode(ip.src, ip.dst).unwrap();
    assert_eq!(
        decode(&ip, &v2, &expect(Version::V3)),
        Err(Reject::BadVersion)
    );
    let v3 = v3_advert().encode(ip.src, ip.dst).unwrap();
    assert_eq!(
        decode(&ip, &v3, &expect(Version::V2)),
        Err(Reject::BadVersion)
    );
    // A version 1 header sized like v3.
    assert_eq!(v3_edited(|b| b[0] = 0x11), Err(Reject::BadVersion));
}

#[test]
fn rejects_a_type_other_than_advertisement() {
    assert_eq!(v3_edited(|b| b[0] = 0x32), Err(Reject::BadType));
}

#[test]
fn rejects_another_vrid() {
    assert_eq!(v3_edited(|b| b[1] = 52), Err(Reject::VridMismatch));
}

#[test]
fn rejects_v2_auth_problems() {
    let ip = mcast(PEER);
    let with_pass = Expect {
        auth: Auth::password("secret"),
        ..expect(Version::V2)
    };
    // Unknown auth type.
    let mut bytes = v2_advert().encode(ip.src, ip.dst).unwrap();
    bytes[4] = 3;
    reseal(Version::V2, &ip, &mut bytes);
    assert_eq!(decode(&ip, &bytes, &with_pass), Err(Reject::BadAuthType));
    // None sent, password expected, and the other way round; AH (2) is
    // known but never ours.
    let none = v2_advert().encode(ip.src, ip.dst).unwrap();
    assert_eq!(decode(&ip, &none, &with_pass), Err(Reject::AuthMismatch));
    let pass = Advert {
        auth: Auth::password("secret"),
        ..v2_advert()
    }
    .encode(ip.src, ip.dst)
    .unwrap();
    assert_eq!(
        decode(&ip, &pass, &expect(Version::V2)),
        Err(Reject::AuthMismatch)
    );
    let mut ah = none.clone();
    ah[4] = 2;
    reseal(Version::V2, &ip, &mut ah);
    assert_eq!(
        decode(&ip, &ah, &expect(Version::V2)),
        Err(Reject::AuthMismatch)
    );
    // Wrong password, and one differing only in its padding.
    let other = Expect {
        auth: Auth::password("secreT"),
        ..expect(Version::V2)
    };
    assert_eq!(decode(&ip, &pass, &other), Err(Reject::BadPassword));
    let mut padded = pass.clone();
    padded[19] = b'x';
    reseal(Version::V2, &ip, &mut padded);
    assert_eq!(decode(&ip, &padded, &with_pass), Err(Reject::BadPassword));
    assert!(decode(&ip, &pass, &with_pass).is_ok());
}

#[test]
fn rejects_a_v2_interval_other_than_ours() {
    let ip = mcast(PEER);
    let bytes = Advert {
        interval_cs: 200,
        ..v2_advert()
    }
    .encode(ip.src, ip.dst)
    .unwrap();
    assert_eq!(
        decode(&ip, &bytes, &expect(Version::V2)),
        Err(Reject::IntervalMismatch)
    );
}

#[test]
fn rejects_a_v3_interval_of_zero() {
    assert_eq!(
        v3_edited(|b| b[4..6].copy_from_slice(&[0xf0, 0])),
        Err(Reject::ZeroInterval)
    );
}

#[test]
fn rejects_bad_checksums() {
    let ip = mcast(PEER);
    let good = v3_advert().encode(ip.src, ip.dst).unwrap();
    let mut flipped = good.clone();
    flipped[2] ^= 1;
    assert_eq!(
        decode(&ip, &flipped, &expect(Version::V3)),
        Err(Reject::BadChecksum)
    );
    // Another source changes the v3 pseudo-header.
    let spoofed = Ipv4Meta { src: PEER2, ..ip };
    assert_eq!(
        decode(&spoofed, &good, &expect(Version::V3)),
        Err(Reject::BadChecksum)
    );
    // Unicast with the group in the pseudo-header, as keepalived before
    // 2.0.x computed it: refused (no unicast_chksum_compat here).
    let uni = Ipv4Meta {
        src: PEER,
        dst: ME,
        ttl: TTL,
    };
    let old_style = v3_advert().encode(PEER, MULTICAST_GROUP).unwrap();
    let exp = Expect {
        unicast_peers: &[PEER],
        ..expect(Version::V3)
    };
    assert_eq!(decode(&uni, &old_style, &exp), Err(Reject::BadChecksum));
    // v2 ignores the addresses but not the bytes.
    let mut v2 = v2_advert().encode(ip.src, ip.dst).unwrap();
    assert!(decode(&spoofed, &v2, &expect(Version::V2)).is_ok());
    v2[13] = 1;
    assert_eq!(
        decode(&ip, &v2, &expect(Version::V2)),
        Err(Reject::BadChecksum)
    );
}

#[test]
fn rejects_a_different_address_list() {
    // Count.
    let ip = mcast(PEER);
    let two = Advert {
        addresses: vec![VIP, VIP2],
        ..v3_advert()
    }
    .encode(ip.src, ip.dst)
    .unwrap();
    assert_eq!(
        decode(&ip, &two, &expect(Version::V3)),
        Err(Reject::AddressMismatch)
    );
    // Content.
    let other = Advert {
        addresses: vec![VIP2],
        ..v3_advert()
    }
    .encode(ip.src, ip.dst)
    .unwrap();
    assert_eq!(
        decode(&ip, &other, &expect(Version::V3)),
        Err(Reject::AddressMismatch)
    );
    // The same address twice does not stand for two different ones.
    let exp = Expect {
        addresses: &[VIP, VIP2],
        ..expect(Version::V3)
    };
    let doubled = Advert {
        addresses: vec![VIP, VIP],
        ..v3_advert()
    }
    .encode(ip.src, ip.dst)
    .unwrap();
    assert_eq!(decode(&ip, &doubled, &exp), Err(Reject::AddressMismatch));
}

#[test]
fn rejects_the_wrong_kind_of_destination() {
    // Multicast advert to a unicast instance.
    let ip = mcast(PEER);
    let bytes = v3_advert().encode(ip.src, ip.dst).unwrap();
    let uni_exp = Expect {
        unicast_peers: &[PEER],
        ..expect(Version::V3)
    };
    assert_eq!(
        decode(&ip, &bytes, &uni_exp),
        Err(Reject::MulticastInUnicastMode)
    );
    // Unicast advert to a multicast instance.
    let uni = Ipv4Meta {
        src: PEER,
        dst: ME,
        ttl: TTL,
    };
    let bytes = v3_advert().encode(uni.src, uni.dst).unwrap();
    assert_eq!(
        decode(&uni, &bytes, &expect(Version::V3)),
        Err(Reject::UnicastInMulticastMode)
    );
    assert!(decode(&uni, &bytes, &uni_exp).is_ok());
}

#[test]
fn rejects_unknown_unicast_sources_only_when_asked() {
    let uni = Ipv4Meta {
        src: PEER2,
        dst: ME,
        ttl: TTL,
    };
    let bytes = v3_advert().encode(uni.src, uni.dst).unwrap();
    let lax = Expect {
        unicast_peers: &[PEER],
        ..expect(Version::V3)
    };
    assert!(decode(&uni, &bytes, &lax).is_ok());
    let strict = Expect {
        check_unicast_src: true,
        ..lax
    };
    assert_eq!(
        decode(&uni, &bytes, &strict),
        Err(Reject::UnknownUnicastSource)
    );
}

#[test]
fn rejects_our_own_adverts() {
    let ip = mcast(ME);
    let bytes = v3_advert().encode(ip.src, ip.dst).unwrap();
    assert_eq!(
        decode(&ip, &bytes, &expect(Version::V3)),
        Err(Reject::FromOwnAddress)
    );
}

#[test]
fn splits_an_ipv4_packet_and_builds_one() {
    let payload = v3_advert().encode(PEER, MULTICAST_GROUP).unwrap();
    let header = ipv4_header(PEER, MULTICAST_GROUP, payload.len());
    assert_eq!(header[0], 0x45);
    assert_eq!(header[1], 0xc0);
    assert_eq!(u16::from_be_bytes([header[2], header[3]]), 32);
    assert_eq!((header[8], header[9]), (255, 112));
    assert_eq!(independent_checksum(&[&header]), 0, "header checksum");
    let mut packet = [header.as_slice(), &payload].concat();
    // Ethernet padding past the total length is cut off.
    packet.extend_from_slice(&[0xee; 14]);
    let (meta, vrrp) = split_ipv4(&packet).unwrap();
    assert_eq!(meta, mcast(PEER));
    assert_eq!(vrrp, payload.as_slice());
    assert_eq!(decode(&meta, vrrp, &expect(Version::V3)), Ok(v3_advert()));
}

#[test]
fn split_honours_ip_options() {
    let payload = v3_advert().encode(PEER, MULTICAST_GROUP).unwrap();
    let mut header = ipv4_header(PEER, MULTICAST_GROUP, payload.len() + 4).to_vec();
    header[0] = 0x46;
    header.extend_from_slice(&[1, 1, 1, 0]); // NOPs and end of options
    let packet = [header.as_slice(), &payload].concat();
    let (_, vrrp) = split_ipv4(&packet).unwrap();
    assert_eq!(vrrp, payload.as_slice());
}

#[test]
fn split_rejects_what_is_not_a_whole_vrrp_packet() {
    let payload = v3_advert().encode(PEER, MULTICAST_GROUP).unwrap();
    let packet = [
        ipv4_header(PEER, MULTICAST_GROUP, payload.len()).as_slice(),
        &payload,
    ]
    .concat();
    assert_eq!(split_ipv4(&packet[..19]), Err(Reject::Truncated));
    assert_eq!(split_ipv4(&packet[..30]), Err(Reject::Truncated));
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut p = packet.clone();
        f(&mut p);
        split_ipv4(&p).map(|_| ())
    };
    assert_eq!(edit(&|p| p[0] = 0x65), Err(Reject::BadIpHeader), "IPv6");
    assert_eq!(edit(&|p| p[0] = 0x44), Err(Reject::BadIpHeader), "IHL 4");
    assert_eq!(
        edit(&|p| p[2..4].copy_from_slice(&[0, 16])),
        Err(Reject::BadIpHeader)
    );
    assert_eq!(
        edit(&|p| p[6] = 0x20),
        Err(Reject::BadIpHeader),
        "more fragments"
    );
    assert_eq!(edit(&|p| p[7] = 1), Err(Reject::BadIpHeader), "offset");
    assert_eq!(edit(&|p| p[6] = 0x40), Ok(()), "don't fragment is fine");
    assert_eq!(edit(&|p| p[9] = 17), Err(Reject::NotVrrp));
}

#[test]
fn reject_names_are_unique_and_indexed() {
    let mut names: Vec<&str> = Reject::ALL.iter().map(|r| r.as_str()).collect();
    for (i, r) in Reject::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
    }
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Reject::ALL.len());
    let mut counts = RejectCounts::default();
    counts.bump(Reject::BadTtl);
    counts.bump(Reject::BadTtl);
    counts.bump(Reject::NotRunning);
    assert_eq!(counts.get(Reject::BadTtl), 2);
    assert_eq!(counts.get(Reject::BadChecksum), 0);
    assert_eq!(counts.total(), 3);
    assert_eq!(counts.iter().count(), Reject::ALL.len());
}
