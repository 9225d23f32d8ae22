//! IPFIX messages (RFC 7011 section 3): a 16-byte header, then sets, at most one MTU each.
//!
//! A message carries as many records as fit; records of one template go in one data set, and a
//! message that changes template opens another. The sequence number is that of the first data
//! record, counted per collector (the transport session) from the session's start.

use super::{
    FlowRecord,
    template::{self, record_len_of, template_of},
};

/// IPFIX's version number, the first field of every message.
const VERSION: u16 = 10;
/// Bytes of a message header.
#[cfg(test)]
const HEADER_LEN: usize = 16;
/// Bytes of a set header.
const SET_HEADER_LEN: usize = 4;
/// Smallest accepted MTU: a header, the template set and one IPv6 record must fit.
pub const MIN_MTU: usize = 512;

/// One encoded message and the data records in it.
pub struct Message {
    pub bytes: Vec<u8>,
    pub records: u32,
}

/// Builds messages for one collector session.
pub struct Encoder {
    mtu: usize,
    domain: u32,
    /// Data records sent before the next message (RFC 7011: modulo 2^32).
    sequence: u32,
}

impl Encoder {
    /// `mtu`: largest message in bytes (at least [`MIN_MTU`]); `domain`: the observation
    /// domain id.
    pub fn new(mtu: usize, domain: u32) -> Encoder {
        Encoder {
            mtu: mtu.max(MIN_MTU),
            domain,
            sequence: 0,
        }
    }

    /// The messages carrying `records` (records that are not IP are skipped), the first one
    /// starting with the template set if `with_templates`. With no record and templates asked
    /// for, one message with the template set alone.
    pub fn encode(
        &mut self,
        records: &[FlowRecord],
        with_templates: bool,
        export_time_s: u32,
    ) -> Vec<Message> {
        let mut out = Vec::new();
        let mut msg = self.start(export_time_s);
        let mut count = 0u32;
        if with_templates {
            msg.extend_from_slice(&template::template_set());
        }
        let mut set_start: Option<(usize, u16)> = None;
        for r in records {
            let Some(id) = template_of(r) else { continue };
            let len = record_len_of(id);
            let same_set = matches!(set_start, Some((_, open)) if open == id);
            let needed = len + if same_set { 0 } else { SET_HEADER_LEN };
            if msg.len() + needed > self.mtu {
                close_set(&mut msg, set_start.take());
                out.push(self.finish(msg, count));
                count = 0;
                msg = self.start(export_time_s);
            }
            if !matches!(set_start, Some((_, open)) if open == id) {
                close_set(&mut msg, set_start.take());
                set_start = Some((msg.len(), id));
                msg.extend_from_slice(&id.to_be_bytes());
                msg.extend_from_slice(&[0, 0]);
            }
            template::encode(r, id, &mut msg);
            count += 1;
        }
        close_set(&mut msg, set_start.take());
        if count > 0 || with_templates {
            out.push(self.finish(msg, count));
        }
        out
    }

    fn start(&self, export_time_s: u32) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.mtu);
        m.extend_from_slice(&VERSION.to_be_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&export_time_s.to_be_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&self.domain.to_be_bytes());
        m
    }

    fn finish(&mut self, mut m: Vec<u8>, records: u32) -> Message {
        let len = m.len() as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m[8..12].copy_from_slice(&self.sequence.to_be_bytes());
        self.sequence = self.sequence.wrapping_add(records);
        Message { bytes: m, records }
    }
}

/// Writes the length of the set that starts at `start`, now that its records are in.
fn close_set(m: &mut [u8], start: Option<(usize, u16)>) {
    if let Some((at, _)) = start {
        let len = (m.len() - at) as u16;
        m[at + 2..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        flow::{FiveTuple, Protocol},
        ipfix::{
            EndReason,
            template::{RECORD_LEN_V4, RECORD_LEN_V6},
        },
    };

    fn record(port: u16, v6: bool) -> FlowRecord {
        let (src, dst) = if v6 {
            ("fd00::1", "fd00::2")
        } else {
            ("10.0.0.1", "10.0.0.2")
        };
        FlowRecord {
            tuple: FiveTuple {
                proto: Protocol::Tcp,
                src: src.parse().unwrap(),
                src_port: port,
                dst: dst.parse().unwrap(),
                dst_port: 80,
                interface: Default::default(),
            },
            packets: 1,
            bytes: 60,
            tcp_flags: 0x02,
            icmp_type: 0,
            icmp_code: 0,
            ingress_interface: 2,
            egress_interface: 0,
            flow_direction: 0,
            start_ms: 1,
            end_ms: 2,
            end_reason: EndReason::Active,
            vlan_id: 0,
        }
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[test]
    fn messages_stay_within_the_mtu_and_number_their_records() {
        let records: Vec<_> = (0..100).map(|i| record(i, i % 3 == 0)).collect();
        let mut enc = Encoder::new(1400, 42);
        let msgs = enc.encode(&records, true, 1_700_000_000);
        assert!(msgs.len() > 1);
        let mut seq = 0;
        for m in &msgs {
            assert!(m.bytes.len() <= 1400);
            assert_eq!(u16_at(&m.bytes, 0), 10);
            assert_eq!(u16_at(&m.bytes, 2) as usize, m.bytes.len());
            assert_eq!(u32_at(&m.bytes, 4), 1_700_000_000);
            assert_eq!(u32_at(&m.bytes, 8), seq, "sequence: records sent before");
            assert_eq!(u32_at(&m.bytes, 12), 42);
            // Walk the sets: their lengths add up to the message, records to the count.
            let (mut at, mut n) = (HEADER_LEN, 0);
            while at < m.bytes.len() {
                let (id, len) = (u16_at(&m.bytes, at), u16_at(&m.bytes, at + 2) as usize);
                match id {
                    2 => {}
                    256 => n += (len - 4) / RECORD_LEN_V4,
                    257 => n += (len - 4) / RECORD_LEN_V6,
                    other => panic!("set id {other}"),
                }
                at += len;
            }
            assert_eq!(at, m.bytes.len());
            assert_eq!(n, m.records as usize);
            seq += m.records;
        }
        assert_eq!(seq, 100);
        let more = enc.encode(&records[..1], false, 1_700_000_001);
        assert_eq!(u32_at(&more[0].bytes, 8), 100, "the count goes on");
    }

    #[test]
    fn templates_alone_when_nothing_is_due() {
        let mut enc = Encoder::new(1400, 1);
        let msgs = enc.encode(&[], true, 0);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].records, 0);
        assert_eq!(u16_at(&msgs[0].bytes, HEADER_LEN), 2);
        assert!(enc.encode(&[], false, 0).is_empty());
    }
}
