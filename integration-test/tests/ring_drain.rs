//! The ring-buffer reader on the real program through BPF_PROG_TEST_RUN: a drain is bounded
//! (under sustained overload it gives the runtime back), and the next drain takes the rest,
//! nothing lost.

use ayaflow::{
    ebpf::{
        KernelProgram, LoadOptions,
        ring::{self, DRAIN_LIMIT, Drained, PacketSink},
        test_run::test_run,
    },
    flow::Packet,
};
use ayaflow_common::{counters::Counter, flow::Direction};
use integration_test::{frames::*, require_bpf};

#[derive(Default)]
struct Count {
    packets: usize,
    malformed: u64,
}

impl PacketSink for Count {
    fn packets(&mut self, batch: &[Packet]) {
        self.packets += batch.len();
    }
    fn malformed(&mut self, count: u64) {
        self.malformed += count;
    }
}

#[test]
fn a_drain_stops_at_its_limit_and_the_next_one_takes_the_rest() {
    require_bpf();
    const MORE: usize = 1000;
    let opts = LoadOptions {
        // Room for every event: a drop would hide what the drains take.
        ring_buffer_size: 32 << 20,
        ..LoadOptions::default()
    };
    let mut prog = KernelProgram::load(&opts).expect("loading the classifier");
    let mut events = prog.take_events().unwrap();
    let counters = prog.take_counters().unwrap();
    let frame = eth(
        ETH_P_IP,
        &ipv4(17, A4, B4, &[], 0, &udp(5000, 53, &[0; 20])),
    );
    let sent = DRAIN_LIMIT + MORE;
    test_run(
        prog.program_fd(Direction::Ingress),
        &frame,
        None,
        sent as u32,
    )
    .unwrap();
    let t = counters.read().unwrap();
    assert_eq!(t.get(Direction::Ingress, Counter::Packets), sent as u64);
    assert_eq!(t.get(Direction::Ingress, Counter::RingbufDrops), 0);

    let (mut batch, mut sink) = (Vec::new(), Count::default());
    assert_eq!(
        ring::drain(
            &mut events,
            &Default::default(),
            &mut batch,
            &mut sink,
            DRAIN_LIMIT
        ),
        Drained::Limit
    );
    assert_eq!(
        sink.packets, DRAIN_LIMIT,
        "one drain hands on its limit, no more"
    );
    assert_eq!(
        ring::drain(
            &mut events,
            &Default::default(),
            &mut batch,
            &mut sink,
            DRAIN_LIMIT
        ),
        Drained::All
    );
    assert_eq!(sink.packets, sent, "the next drain takes the rest");
    assert_eq!(sink.malformed, 0);
}
