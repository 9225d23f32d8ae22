//! Flow mode on crafted frames through BPF_PROG_TEST_RUN: the in-kernel flow table aggregates
//! per connection and direction, falls back to the ring when full or near-full, stays packed
//! through churn, and the agent's sweeps report every packet exactly once (also while racing
//! the kernel on another CPU) and only the TCP flags new since a slot's last delta (cumulative
//! flags made a FIN exchange split over two sweeps look like a new connection).

use ayaflow::ebpf::{
    KernelProgram, LoadOptions,
    sweep::{FlowDelta, FlowSweeper},
    test_run::{SkBuffCtx, test_run},
};
use ayaflow_common::{counters::Counter, flow::Direction, globals};
use integration_test::{frames::*, require_bpf, wait_for};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

/// Sweeps until the table holds no connection (drained slots are freed a grace period after
/// they were drained), returning every delta on the way.
fn sweep_until_empty(flows: &mut FlowSweeper) -> Vec<FlowDelta> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut all = flows.sweep(u64::MAX).copied().collect::<Vec<_>>();
    while flows.tracked() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "slots still held after 30 s: {}",
            flows.tracked()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
        all.extend(flows.sweep(u64::MAX).copied().collect::<Vec<_>>());
    }
    all
}

/// The classifier loaded in flow mode with a flow table of `flow_map_size` slots.
fn load_flow_mode(flow_map_size: u32) -> KernelProgram {
    require_bpf();
    let opts = LoadOptions {
        capture_mode: globals::CAPTURE_MODE_FLOWS,
        flow_map_size,
        ..LoadOptions::default()
    };
    KernelProgram::load(&opts).expect("loading the classifier in flow mode")
}

/// Flow mode: packets of one connection accumulate in `FLOWS` (no event), a second connection
/// that does not fit in a full table falls back to an event flagged as such, and both are
/// counted. Once the first connection is idle its slot is freed, and the second one gets it.
#[test]
fn flow_mode_aggregates_then_falls_back_when_full() {
    use ayaflow_common::event::EVENT_FLAG_FLOW_FALLBACK;
    let mut prog = load_flow_mode(1);
    let mut ring = prog.take_events().unwrap();
    let counters = prog.take_counters().unwrap();
    let mut flows = prog.take_flows().unwrap();
    assert_eq!(flows.capacity(), 1);
    let first = eth(
        ETH_P_IP,
        &ipv4(17, A4, B4, &[], 0, &udp(1000, 53, &[0; 40])),
    );
    let second = eth(
        ETH_P_IP,
        &ipv4(17, A4, B4, &[], 0, &udp(1001, 53, &[0; 40])),
    );
    let fd = prog.program_fd(Direction::Ingress);
    for _ in 0..3 {
        assert_eq!(test_run(fd, &first, None, 1).unwrap().retval, PASS);
    }
    assert_eq!(test_run(fd, &second, None, 1).unwrap().retval, PASS);

    // The first connection: one slot with 3 packets, no events.
    let deltas = flows
        .sweep(ayaflow::ebpf::sweep::flow_clock_ns())
        .copied()
        .collect::<Vec<_>>();
    assert_eq!(deltas.len(), 1, "{deltas:?}");
    assert_eq!(
        (deltas[0].tuple.src_port, deltas[0].packets, deltas[0].bytes),
        (1000, 3, 3 * first.len() as u64)
    );
    assert!(
        flows
            .sweep(ayaflow::ebpf::sweep::flow_clock_ns())
            .copied()
            .collect::<Vec<_>>()
            .is_empty(),
        "nothing new, nothing reported again"
    );
    // The second: the table (1 slot) was full, so it came as a flagged event.
    let mut events = Vec::new();
    while let Some(item) = ring.next_record() {
        events.push(ayaflow::decode::packet_event(item).unwrap());
    }
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].key.src_port, 1001);
    assert_eq!(events[0].flags, EVENT_FLAG_FLOW_FALLBACK);
    let t = counters.read().unwrap();
    assert_eq!(t.get(Direction::Ingress, Counter::Packets), 4);
    assert_eq!(
        t.get(Direction::Ingress, Counter::Bytes),
        4 * first.len() as u64
    );
    assert_eq!(t.get(Direction::Ingress, Counter::FlowFallbacks), 1);
    assert_eq!(t.get(Direction::Ingress, Counter::RingbufDrops), 0);

    // Idle (every slot is, at `u64::MAX`): drained, then freed, with nothing more to report.
    assert!(sweep_until_empty(&mut flows).is_empty());
    // The freed slot takes the second connection: no event this time.
    assert_eq!(test_run(fd, &second, None, 1).unwrap().retval, PASS);
    let deltas = flows
        .sweep(ayaflow::ebpf::sweep::flow_clock_ns())
        .copied()
        .collect::<Vec<_>>();
    assert_eq!(deltas.len(), 1, "{deltas:?}");
    assert_eq!((deltas[0].tuple.src_port, deltas[0].packets), (1001, 1));
    assert!(ring.next_record().is_none());
    assert_eq!(
        counters
            .read()
            .unwrap()
            .get(Direction::Ingress, Counter::FlowFallbacks),
        1
    );
}

/// Flow mode: a slot whose packet count reached half its field (2^27 packets without a sweep)
/// takes no more; the next packet goes to the ring buffer as a fallback, and after a sweep the
/// slot counts again. Nothing is lost or counted twice.
#[test]
fn a_slot_near_full_falls_back_until_swept() {
    use ayaflow_common::{event::EVENT_FLAG_FLOW_FALLBACK, flow::counts::PACKET_BITS};
    let mut prog = load_flow_mode(16);
    let mut ring = prog.take_events().unwrap();
    let counters = prog.take_counters().unwrap();
    let mut flows = prog.take_flows().unwrap();
    let fd = prog.program_fd(Direction::Ingress);
    // Each run: a GSO skb said to hold 65,535 segments (the test runner takes the count as
    // given, so the frame itself can stay small).
    let f = eth(
        ETH_P_IP,
        &ipv4(6, A4, B4, &[], 0, &tcp(7, 8, 0x10, &[0; 40])),
    );
    let ctx = SkBuffCtx::default().gso_segs(65_535).gso_size(1);
    let segs = 65_535u64;
    let wire = (f.len() + 65_534 * (14 + 20 + 20)) as u64;
    let half = 1u64 << (PACKET_BITS - 1);
    // The smallest number of runs that reaches half: all of them fit, the next one does not.
    let fitting = half.div_ceil(segs);
    test_run(fd, &f, Some(&ctx), fitting as u32).expect("test run");
    assert!(
        ring.next_record().is_none(),
        "no event while the slot has room"
    );
    assert_eq!(test_run(fd, &f, Some(&ctx), 1).unwrap().retval, PASS);
    let event =
        ayaflow::decode::packet_event(ring.next_record().expect("a fallback event")).unwrap();
    assert_eq!(
        (
            event.flags,
            u64::from(event.packets),
            u64::from(event.bytes)
        ),
        (EVENT_FLAG_FLOW_FALLBACK, segs, wire)
    );
    assert!(ring.next_record().is_none());

    let now = ayaflow::ebpf::sweep::flow_clock_ns();
    let deltas = flows.sweep(now).copied().collect::<Vec<_>>();
    assert_eq!(deltas.len(), 1, "{deltas:?}");
    assert_eq!(
        (deltas[0].packets, deltas[0].bytes),
        (fitting * segs, fitting * wire)
    );
    // Swept: the slot counts again.
    assert_eq!(test_run(fd, &f, Some(&ctx), 1).unwrap().retval, PASS);
    assert!(ring.next_record().is_none(), "counted in the slot again");
    let deltas = flows
        .sweep(ayaflow::ebpf::sweep::flow_clock_ns())
        .copied()
        .collect::<Vec<_>>();
    assert_eq!((deltas[0].packets, deltas[0].bytes), (segs, wire));
    let t = counters.read().unwrap();
    assert_eq!(
        t.get(Direction::Ingress, Counter::Packets),
        (fitting + 2) * segs
    );
    assert_eq!(t.get(Direction::Ingress, Counter::FlowFallbacks), 1);
}

/// Flow mode with thousands of connections: every one is reported once, nothing twice, and a
/// later packet shows up as exactly one delta.
#[test]
fn flow_sweep_reports_every_connection_once() {
    const FLOWS: u16 = 5000;
    let mut prog = load_flow_mode(16384);
    let mut sweeper = prog.take_flows().unwrap();
    let counters = prog.take_counters().unwrap();
    let fd = prog.program_fd(Direction::Ingress);
    let frame = |port: u16| {
        eth(
            ETH_P_IP,
            &ipv4(17, A4, B4, &[], 0, &udp(port, 53, &[0; 20])),
        )
    };
    for port in 0..FLOWS {
        test_run(fd, &frame(10_000 + port), None, 1).unwrap();
    }
    // At a quarter full, probing finds every connection a slot.
    assert_eq!(
        counters
            .read()
            .unwrap()
            .get(Direction::Ingress, Counter::FlowFallbacks),
        0
    );
    let now = ayaflow::ebpf::sweep::flow_clock_ns();
    let deltas = sweeper.sweep(now).copied().collect::<Vec<_>>();
    assert_eq!(deltas.len(), FLOWS as usize);
    let mut ports: Vec<u16> = deltas.iter().map(|d| d.tuple.src_port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), FLOWS as usize, "each connection once");
    assert!(
        deltas
            .iter()
            .all(|d| d.packets == 1 && d.bytes == frame(0).len() as u64)
    );
    assert!(
        sweeper.sweep(now).copied().collect::<Vec<_>>().is_empty(),
        "nothing new, nothing reported again"
    );
    test_run(fd, &frame(10_007), None, 1).unwrap();
    let again = sweeper.sweep(now).copied().collect::<Vec<_>>();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].tuple.src_port, again[0].packets), (10_007, 1));
}

/// Flow mode with connections coming and going: freed slots are reused first (the free stack
/// is last in, first out), so however many connections came before, the ones in use occupy a
/// packed run of slots, a few pages of a large table rather than one page each.
#[test]
fn flow_slots_in_use_stay_packed_through_churn() {
    const AT_ONCE: u16 = 200;
    let mut prog = load_flow_mode(65536);
    let mut sweeper = prog.take_flows().unwrap();
    let counters = prog.take_counters().unwrap();
    let fd = prog.program_fd(Direction::Ingress);
    let mut delivered = 0u64;
    let mut first_used = None;
    for round in 0..10u16 {
        for i in 0..AT_ONCE {
            let port = 1000 + round * AT_ONCE + i;
            let frame = eth(
                ETH_P_IP,
                &ipv4(17, A4, B4, &[], 0, &udp(port, 53, &[0; 20])),
            );
            test_run(fd, &frame, None, 1).unwrap();
            delivered += 1;
        }
        let used = sweeper.slots_in_use();
        assert_eq!(used.len(), AT_ONCE as usize, "round {round}");
        let span = used[used.len() - 1] - used[0] + 1;
        assert_eq!(
            span, AT_ONCE as usize,
            "round {round}: {AT_ONCE} connections spread over {span} slots"
        );
        // The same slots every round: those freed last are handed out first.
        let first = first_used.get_or_insert_with(|| used.clone());
        assert_eq!(&used, first, "round {round}");
        let taken: u64 = sweep_until_empty(&mut sweeper)
            .iter()
            .map(|d| d.packets)
            .sum();
        assert_eq!(taken, u64::from(AT_ONCE), "round {round}");
    }
    let t = counters.read().unwrap();
    assert_eq!(t.get(Direction::Ingress, Counter::Packets), delivered);
    assert_eq!(t.get(Direction::Ingress, Counter::FlowFallbacks), 0);
}

/// Flow mode while the agent sweeps at the same time, on another CPU, draining and freeing
/// slots as fast as it can (every slot counts as idle): the sums taken add up exactly to the
/// packets the program saw, none lost between a read and a free, none counted twice.
#[test]
fn flow_sweeps_racing_the_kernel_lose_nothing() {
    const CALLS: u32 = 200;
    const REPEAT: u32 = 50_000;
    let mut prog = load_flow_mode(64);
    let mut sweeper = prog.take_flows().unwrap();
    let counters = prog.take_counters().unwrap();
    let fd = prog.program_fd(Direction::Ingress);
    let frames: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            eth(
                ETH_P_IP,
                &ipv4(6, A4, B4, &[], 0, &tcp(40_000 + i, 443, 0x10, &[0; 10])),
            )
        })
        .collect();
    let sent = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            for call in 0..CALLS {
                let frame = &frames[call as usize % frames.len()];
                assert_eq!(test_run(fd, frame, None, REPEAT).unwrap().retval, PASS);
            }
        });
        let mut all = Vec::new();
        while !sender.is_finished() {
            all.extend(sweeper.sweep(u64::MAX).copied().collect::<Vec<_>>());
        }
        sender.join().unwrap();
        all.extend(sweep_until_empty(&mut sweeper));
        all
    });
    let packets: u64 = sent.iter().map(|d| d.packets).sum();
    let bytes: u64 = sent.iter().map(|d| d.bytes).sum();
    let expected_packets = u64::from(CALLS) * u64::from(REPEAT);
    let t = counters.read().unwrap();
    let fallbacks = t.get(Direction::Ingress, Counter::FlowFallbacks);
    assert_eq!(
        packets + fallbacks,
        expected_packets,
        "{fallbacks} fell back"
    );
    assert_eq!(
        bytes + fallbacks * frames[0].len() as u64,
        t.get(Direction::Ingress, Counter::Bytes)
    );
    assert_eq!(
        t.get(Direction::Ingress, Counter::Packets),
        expected_packets
    );
    let ports: std::collections::BTreeSet<u16> = sent.iter().map(|d| d.tuple.src_port).collect();
    assert_eq!(ports.len(), frames.len());
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
    let mut prog = load_flow_mode(16);
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
