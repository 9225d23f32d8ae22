//! The agent's two readers of the kernel program, on the real program through
//! BPF_PROG_TEST_RUN: a ring drain is bounded (under sustained overload it gives the runtime
//! back, and the next drain takes the rest, nothing lost), and a flow sweep reports only the TCP
//! flags new since the slot's last delta (cumulative flags made a FIN exchange split over two
//! sweeps look like a new connection: its SYN bit was still there).

use std::net::Ipv4Addr;

use ayaflow::{
    ebpf::{
        KernelProgram, LoadOptions,
        ring::{self, DRAIN_LIMIT, Drained, PacketSink},
        sweep::{FlowDelta, FlowSweeper},
        test_run::test_run,
    },
    flow::Packet,
};
use ayaflow_common::{counters::Counter, flow::Direction, globals};
use integration_test::{frames::*, require_bpf, wait_for};

const A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

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
        ring::drain(&mut events, &mut batch, &mut sink, DRAIN_LIMIT),
        Drained::Limit
    );
    assert_eq!(
        sink.packets, DRAIN_LIMIT,
        "one drain hands on its limit, no more"
    );
    assert_eq!(
        ring::drain(&mut events, &mut batch, &mut sink, DRAIN_LIMIT),
        Drained::All
    );
    assert_eq!(sink.packets, sent, "the next drain takes the rest");
    assert_eq!(sink.malformed, 0);
}

/// Sweeps until every slot of the table is free again (an idle slot drains, then frees after
/// its grace), returning every delta taken meanwhile.
fn sweep_until_free(flows: &mut FlowSweeper) -> Vec<FlowDelta> {
    let mut all = Vec::new();
    wait_for(30, "the idle slot to be freed", || {
        all.extend(flows.sweep(u64::MAX));
        flows.slots_in_use().is_empty().then_some(())
    });
    all
}

#[test]
fn flow_sweeps_report_only_the_tcp_flags_new_since_the_last_one() {
    require_bpf();
    let opts = LoadOptions {
        capture_mode: globals::CAPTURE_MODE_FLOWS,
        flow_map_size: 16,
        ..LoadOptions::default()
    };
    let mut prog = KernelProgram::load(&opts).expect("loading the classifier in flow mode");
    let mut flows = prog.take_flows().unwrap();
    let fd = prog.program_fd(Direction::Ingress);
    let segment = |flags: u8| {
        eth(
            ETH_P_IP,
            &ipv4(6, A4, B4, &[], 0, &tcp(40000, 80, flags, &[])),
        )
    };
    let now = ayaflow::ebpf::sweep::flow_clock_ns;
    let sweep_flags = |flows: &mut FlowSweeper| -> Vec<(u64, u8)> {
        flows
            .sweep(now())
            .map(|d| (d.packets, d.tcp_flags))
            .collect()
    };

    test_run(fd, &segment(SYN), None, 1).unwrap();
    assert_eq!(sweep_flags(&mut flows), [(1, SYN)]);
    test_run(fd, &segment(ACK), None, 3).unwrap();
    assert_eq!(
        sweep_flags(&mut flows),
        [(3, ACK)],
        "SYN was reported already"
    );
    test_run(fd, &segment(FIN | ACK), None, 1).unwrap();
    assert_eq!(sweep_flags(&mut flows), [(1, FIN)], "no SYN with the FIN");
    test_run(fd, &segment(ACK), None, 1).unwrap();
    assert_eq!(sweep_flags(&mut flows), [(1, 0)], "nothing new");

    // A freed slot forgets: the same tuple seen again is a new connection with its own SYN.
    assert!(sweep_until_free(&mut flows).is_empty());
    test_run(fd, &segment(SYN), None, 1).unwrap();
    assert_eq!(sweep_flags(&mut flows), [(1, SYN)]);
}
