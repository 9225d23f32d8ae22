//! rtnetlink bytes: the `RTM_GETLINK` dump request, and the datagrams the kernel sends back
//! (dump replies and `RTNLGRP_LINK` notifications, which share one socket) decoded into
//! [`Message`]s.
//!
//! Of a link message only the header (`struct ifinfomsg`) and `IFLA_IFNAME` are decoded, with
//! netlink-packet's buffers: an attribute this code does not know cannot make a link go
//! unnoticed.

use netlink_packet_core::{
    DecodeError, ErrorBuffer, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, parse_string,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkFlags, LinkHeader, LinkMessage},
};

use super::Link;

/// `sizeof(struct ifinfomsg)`: the link header before the attributes.
const IFINFOMSG_LEN: usize = 16;

/// One message of a datagram, as far as the watcher cares.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Message {
    /// `RTM_NEWLINK` (a dump reply or a notification): the link as it is now.
    NewLink(Link),
    /// `RTM_DELLINK`: the link of this ifindex is gone.
    DelLink(u32),
    /// The end of our dump.
    DumpDone,
    /// The kernel refused our dump request with this errno.
    DumpRefused(i32),
}

/// A decoded datagram.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Datagram {
    pub messages: Vec<Message>,
    /// True if and only if a reply of our dump carried `NLM_F_DUMP_INTR`: the links changed
    /// while the kernel was listing them, so the dump may have missed or doubled one.
    pub dump_interrupted: bool,
}

/// Who our dump's replies are addressed to: our socket's port id and the request's sequence
/// number (notifications carry those of whoever caused them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DumpId {
    pub port: u32,
    pub seq: u32,
}

/// The bytes of an `RTM_GETLINK` dump request of every link, numbered `seq`.
pub(super) fn dump_request(seq: u32) -> Vec<u8> {
    let mut msg = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    msg.header.sequence_number = seq;
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Decodes every message of `datagram`. Link messages of other families (a bridge's
/// `AF_BRIDGE` port messages, where a `RTM_DELLINK` only means "left the bridge") and
/// anything else are skipped; an error means the bytes are not what the kernel sends.
pub(super) fn decode(datagram: &[u8], dump: DumpId) -> Result<Datagram, DecodeError> {
    let mut out = Datagram::default();
    let mut rest = datagram;
    while !rest.is_empty() {
        let msg = NetlinkBuffer::new_checked(rest)?;
        let len = msg.length() as usize;
        let ours = msg.port_number() == dump.port && msg.sequence_number() == dump.seq;
        if ours && msg.flags() & NLM_F_DUMP_INTR != 0 {
            out.dump_interrupted = true;
        }
        let payload = msg.payload();
        match msg.message_type() {
            libc::RTM_NEWLINK => out.messages.extend(link_of(payload)?.map(Message::NewLink)),
            libc::RTM_DELLINK => out
                .messages
                .extend(link_of(payload)?.map(|l| Message::DelLink(l.ifindex))),
            NLMSG_DONE if ours => out.messages.push(Message::DumpDone),
            NLMSG_ERROR if ours => {
                let code = ErrorBuffer::new_checked(payload)?.code();
                // Code 0 is an acknowledgement, which we do not ask for.
                if let Some(code) = code {
                    out.messages.push(Message::DumpRefused(-code.get()));
                }
            }
            _ => {}
        }
        // Messages are 4-byte aligned within a datagram (NLMSG_ALIGN); the last may not be
        // padded.
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(out)
}

/// The link of a `RTM_NEWLINK`/`RTM_DELLINK` payload; `None` for another family than
/// `AF_UNSPEC` (the kernel's own link messages).
fn link_of(payload: &[u8]) -> Result<Option<Link>, DecodeError> {
    let header = LinkHeader::parse(payload)?;
    if header.interface_family != AddressFamily::Unspec {
        return Ok(None);
    }
    let attributes = payload.get(IFINFOMSG_LEN..).unwrap_or_default();
    let mut name = None;
    for nla in NlasIterator::new(attributes) {
        let nla = nla?;
        if nla.kind() == libc::IFLA_IFNAME {
            name = Some(parse_string(nla.value())?);
        }
    }
    let name = name.ok_or_else(|| {
        DecodeError::from(format!(
            "link message of ifindex {} has no name",
            header.index
        ))
    })?;
    Ok(Some(Link {
        ifindex: header.index,
        name,
        link_type: header.link_layer_type.into(),
        up: header.flags.contains(LinkFlags::Up),
    }))
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::DoneMessage;
    use netlink_packet_route::link::{LinkAttribute, LinkLayerType};

    use super::*;

    const DUMP: DumpId = DumpId { port: 77, seq: 5 };

    fn bytes(
        payload: NetlinkPayload<RouteNetlinkMessage>,
        port: u32,
        seq: u32,
        flags: u16,
    ) -> Vec<u8> {
        let mut msg = NetlinkMessage::new(NetlinkHeader::default(), payload);
        msg.header.port_number = port;
        msg.header.sequence_number = seq;
        msg.header.flags = flags;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    fn link_message(family: AddressFamily, ifindex: u32, name: &str, up: bool) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.interface_family = family;
        m.header.index = ifindex;
        m.header.link_layer_type = LinkLayerType::Ether;
        if up {
            m.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        }
        m.attributes = vec![
            LinkAttribute::Mtu(1500),
            LinkAttribute::IfName(name.to_owned()),
            LinkAttribute::TxQueueLen(1000),
        ];
        m
    }

    fn new_link(ifindex: u32, name: &str, up: bool) -> NetlinkPayload<RouteNetlinkMessage> {
        NetlinkPayload::from(RouteNetlinkMessage::NewLink(link_message(
            AddressFamily::Unspec,
            ifindex,
            name,
            up,
        )))
    }

    #[test]
    fn a_dump_and_notifications_in_one_datagram() {
        let mut d = bytes(new_link(1, "lo", true), DUMP.port, DUMP.seq, 2);
        // A notification caused by `ip` (its port and sequence number).
        d.extend(bytes(new_link(7, "veth1", false), 4242, DUMP.seq, 0));
        // A bridge port leaving its bridge: not a deleted link.
        d.extend(bytes(
            NetlinkPayload::from(RouteNetlinkMessage::DelLink(link_message(
                AddressFamily::Bridge,
                7,
                "veth1",
                false,
            ))),
            0,
            0,
            0,
        ));
        d.extend(bytes(
            NetlinkPayload::from(RouteNetlinkMessage::DelLink(link_message(
                AddressFamily::Unspec,
                6,
                "gone",
                false,
            ))),
            0,
            0,
            0,
        ));
        // Another request's end is not ours.
        d.extend(bytes(
            NetlinkPayload::Done(DoneMessage::default()),
            DUMP.port,
            4,
            0,
        ));
        d.extend(bytes(
            NetlinkPayload::Done(DoneMessage::default()),
            DUMP.port,
            DUMP.seq,
            NLM_F_DUMP_INTR,
        ));
        let got = decode(&d, DUMP).expect("valid datagram");
        let link = |ifindex, name: &str, up| Link {
            ifindex,
            name: name.to_owned(),
            link_type: 1,
            up,
        };
        assert_eq!(
            got.messages,
            vec![
                Message::NewLink(link(1, "lo", true)),
                Message::NewLink(link(7, "veth1", false)),
                Message::DelLink(6),
                Message::DumpDone,
            ]
        );
        assert!(got.dump_interrupted);
    }

    #[test]
    fn the_dump_request_is_a_getlink_dump() {
        let req = dump_request(9);
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&req).expect("valid");
        assert_eq!(msg.header.sequence_number, 9);
        assert_eq!(msg.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert!(matches!(
            msg.payload,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(_))
        ));
    }

    #[test]
    fn garbage_and_nameless_links_are_errors() {
        assert!(decode(&[1, 2, 3], DUMP).is_err());
        let mut nameless = link_message(AddressFamily::Unspec, 3, "x", true);
        nameless.attributes.clear();
        let d = bytes(
            NetlinkPayload::from(RouteNetlinkMessage::NewLink(nameless)),
            0,
            0,
            0,
        );
        let e = decode(&d, DUMP).expect_err("no name");
        assert!(e.to_string().contains("ifindex 3 has no name"), "{e}");
        assert_eq!(decode(&[], DUMP).expect("empty"), Datagram::default());
    }
}
