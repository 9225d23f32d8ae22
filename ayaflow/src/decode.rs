//! Bytes from the ring buffer -> `PacketEvent`, length-checked; never panics.

use ayaflow_common::event::PacketEvent;

/// Decodes one ring-buffer record. Returns `None` if it is not exactly one event long (a
/// mismatched kernel object or a corrupt record); the caller counts it.
pub fn packet_event(bytes: &[u8]) -> Option<PacketEvent> {
    if bytes.len() != size_of::<PacketEvent>() {
        return None;
    }
    // SAFETY: the length matches, PacketEvent is plain old data for which every bit pattern is
    // valid, and read_unaligned makes no alignment assumption.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<PacketEvent>()) })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let decoded = packet_event(&bytes);
            prop_assert_eq!(decoded.is_some(), bytes.len() == size_of::<PacketEvent>());
        }

        #[test]
        fn encode_decode_round_trips(ts in any::<u64>(), bytes in any::<u32>(), port in any::<u16>()) {
            let mut e = PacketEvent { timestamp_ns: ts, bytes, ..PacketEvent::default() };
            e.key.src_port = port;
            // SAFETY: viewing a repr(C) value without padding as bytes.
            let raw = unsafe {
                std::slice::from_raw_parts((&e as *const PacketEvent).cast::<u8>(), size_of::<PacketEvent>())
            };
            prop_assert_eq!(packet_event(raw), Some(e));
        }
    }
}
