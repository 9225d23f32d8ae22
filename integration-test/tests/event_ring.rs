//! The agent's reader of the `EVENTS` ring buffer (`ayaflow::ebpf::EventRing`, data pages
//! mapped once) against the real kernel ring: records that run past the end of the data area
//! are put back together byte for byte, and every record read is given back to the kernel.

use ayaflow::ebpf::{KernelProgram, LoadOptions, test_run::test_run};
use ayaflow_common::{
    counters::Counter,
    event::PacketEvent,
    flow::{Direction, FlowKey},
};
use integration_test::{frames::*, require_bpf};

/// The smallest ring the kernel takes: one page, so records wrap every few dozen.
const RING: u32 = 4096;

/// Frames sent: the ring's data area goes round many times.
const FRAMES: u16 = 2000;

/// Records between two reads: fewer than the ring holds, so nothing is dropped.
const READ_EVERY: u16 = 7;

#[test]
fn records_that_wrap_are_read_whole_and_every_record_frees_its_space() {
    require_bpf();
    let record = (size_of::<PacketEvent>() + 8).next_multiple_of(8);
    assert_ne!(
        RING as usize % record,
        0,
        "records of {record} bytes would never cross the ring's end: the test would not test it"
    );
    assert!(usize::from(READ_EVERY) * record < RING as usize);
    let mut prog = KernelProgram::load(&LoadOptions {
        ring_buffer_size: RING,
        ..LoadOptions::default()
    })
    .expect("loading the classifier");
    let mut ring = prog.take_events().unwrap();
    let counters = prog.take_counters().unwrap();

    let mut read: Vec<FlowKey> = Vec::new();
    let mut lengths = Vec::new();
    let mut drain = |ring: &mut ayaflow::ebpf::EventRing| {
        while let Some(bytes) = ring.next_record() {
            let e = ayaflow::decode::packet_event(bytes).expect("a whole event");
            read.push(e.key);
            lengths.push(e.bytes);
        }
    };
    for i in 0..FRAMES {
        // Each frame's source port and length say which it was.
        let f = eth(
            ETH_P_IP,
            &ipv4(
                17,
                A4,
                B4,
                &[],
                0,
                &udp(10_000 + i, 53, &vec![0; usize::from(i % 64)]),
            ),
        );
        test_run(prog.program_fd(Direction::Ingress), &f, None, 1).unwrap();
        if (i + 1) % READ_EVERY == 0 {
            drain(&mut ring);
        }
    }
    drain(&mut ring);

    assert_eq!(read.len(), usize::from(FRAMES), "one event per frame");
    for (i, (key, len)) in read.iter().zip(&lengths).enumerate() {
        let i = i as u16;
        assert_eq!(
            key.src_port,
            10_000 + i,
            "event {i} out of order or garbled"
        );
        assert_eq!(key.dst_port, 53, "event {i} garbled");
        let frame_len = 14 + 20 + 8 + u32::from(i % 64);
        assert_eq!(*len, frame_len, "event {i}'s length garbled");
    }
    let totals = counters.read().unwrap();
    assert_eq!(
        totals.get(Direction::Ingress, Counter::RingbufDrops),
        0,
        "the kernel found the ring full: space read was not given back"
    );
    assert_eq!(ring.pending_bytes(), 0);
}
