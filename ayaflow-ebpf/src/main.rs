//! ayaFlow's TC classifier. It observes and never alters, drops or redirects a packet.
//!
//! Logic:
//! 1) `tc_ingress` / `tc_egress` record which hook saw the packet and call `observe`; the `_l3`
//!    twins do the same on links whose frames start at the IP header (tun, WireGuard, ipip).
//! 2) `parse` reads Ethernet, VLAN, IPv4/IPv6, TCP/UDP/ICMP into a `FlowKey`, in place or from
//!    copies of the headers, never changing the packet; a malformed frame keeps what was parsed
//!    and is flagged.
//! 3) The per-CPU `COUNTERS` of that direction count every packet and byte, so totals are exact
//!    whatever happens next.
//! 4) Raw mode: one `PacketEvent` on the `EVENTS` ring buffer. Flow mode: the packet is added to
//!    its entry in `FLOWS`; only when the map is full does it go to the ring buffer instead.
//!    A full ring buffer is counted, never waited on.
#![no_std]
#![no_main]
// BPF inline assembly (flow.rs's atomics); aya-ebpf needs the same feature.
#![feature(asm_experimental_arch)]

mod flow;
mod maps;
mod parse;
mod tunnel;

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use ayaflow_common::flow::Direction;

/// What every hook returns. `TC_ACT_UNSPEC` is TCX_NEXT under TCX and "continue with the next
/// filter" under a clsact qdisc: whatever else is attached still decides the packet's fate.
const VERDICT: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    flow::observe::<false>(&ctx, Direction::Ingress as u8);
    VERDICT
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    flow::observe::<false>(&ctx, Direction::Egress as u8);
    VERDICT
}

/// `tc_ingress` for links without a link-layer header (the frame starts at the IP header).
#[classifier]
pub fn tc_ingress_l3(ctx: TcContext) -> i32 {
    flow::observe::<true>(&ctx, Direction::Ingress as u8);
    VERDICT
}

/// `tc_egress` for links without a link-layer header.
#[classifier]
pub fn tc_egress_l3(ctx: TcContext) -> i32 {
    flow::observe::<true>(&ctx, Direction::Egress as u8);
    VERDICT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this, so it is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
