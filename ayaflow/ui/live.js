// The live view: the node and what it observes (from /api/status), then, from each
// WS /api/stream frame (one a second): packets/s and bits/s per hook over the last minutes,
// the protocol mix, the top connections with their current rates, and the loss counters.

import { LineChart } from "./chart.js";
import { Table } from "./table.js";
import { bps, bytes, clock, count, dateTime, duration, el, endpoint, exact, iso, pps } from "./format.js";

/** How much the charts show. */
const WINDOW_MS = 5 * 60 * 1000;

/** Short names of the loss counters; the help text comes from /api/status. */
const LOSS_NAMES = {
  ayaflow_ringbuf_drops_total: "Ring-buffer drops",
  ayaflow_connection_table_overflow_packets_total: "Connection table full",
  ayaflow_events_malformed_total: "Malformed events",
  ayaflow_storage_rows_dropped_total: "History rows dropped",
  ayaflow_storage_errors_total: "Storage errors",
  ayaflow_storage_undecodable_blocks_total: "Undecodable history blocks",
  ayaflow_kernel_read_errors_total: "Kernel counter read errors",
  ayaflow_ipfix_records_dropped_total: "IPFIX records dropped",
  ayaflow_stream_frames_skipped_total: "Stream frames skipped",
  ayaflow_stream_clients_dropped_total: "Stream clients dropped",
};

const PROTOCOLS = [
  ["tcp", "TCP"],
  ["udp", "UDP"],
  ["icmp", "ICMP"],
  ["other_ip", "Other IP"],
  ["non_ip", "Not IP"],
];

const $ = (id) => document.getElementById(id);

export class LiveView {
  constructor() {
    this.status = null;
    this.statusAt = 0;
    this.prev = null;
    this.rows = [];
    this.hooks = ["ingress", "egress"];
    const series = (h) => ({ name: h, color: h === "ingress" ? "--s1" : "--s2" });
    this.ppsChart = new LineChart($("chart-pps"), {
      series: this.hooks.map(series),
      windowMs: WINDOW_MS,
      format: pps,
      exact: (v) => `${v.toFixed(1)} packets/s`,
    });
    this.bpsChart = new LineChart($("chart-bps"), {
      series: this.hooks.map(series),
      windowMs: WINDOW_MS,
      format: bps,
      exact: (v) => `${exact(v)} bit/s`,
    });
    this.table = new Table($("conn-table"), columns(), {
      sortKey: "packets",
      rowKey: (r) => r.key,
      empty: "no connection matches",
    });
    for (const id of ["f-addr", "f-port", "f-proto", "f-iface", "f-dir"]) {
      for (const ev of ["input", "change"]) $(id).addEventListener(ev, () => this.showConnections());
    }
    $("live-filter").addEventListener("submit", (e) => e.preventDefault());
  }

  /** Shows what /api/status said. */
  setStatus(status) {
    this.status = status;
    this.statusAt = performance.now();
    const attached = status.direction === "both" ? ["ingress", "egress"] : [status.direction];
    const ifaces = status.interfaces
      .map((i) => `${i.name} (index ${i.ifindex}, ${i.state}${i.reason ? `: ${i.reason}` : ""} since ${clock(i.since_unix)})`)
      .join(", ");
    const facts = [
      ["Interfaces", ifaces || "none", status.interfaces.map((i) => `${i.name}: ${i.state} since ${dateTime(i.since_unix)}`).join("\n")],
      ["Capture mode", status.capture_mode, status.capture_mode === "raw" ? "an event per packet" : "flows aggregated in the kernel"],
      ["Hooks", status.direction, `attached: ${attached.join(" and ")}`],
      ["History", status.history, status.history === "raw" ? "a row per packet" : "a row per connection and window"],
      ["Uptime", duration(status.uptime_seconds), `${exact(status.uptime_seconds)} s`],
      ["Version", status.version, `ayaFlow ${status.version}`],
    ];
    const dl = $("node");
    dl.replaceChildren();
    for (const [k, v, title] of facts) {
      const div = el("div");
      div.append(el("dt", { text: k }), el("dd", { text: v, title, attrs: { "data-fact": k.toLowerCase() } }));
      dl.append(div);
    }
    for (const h of this.hooks) {
      const on = attached.includes(h);
      for (const id of [`legend-pps-${h}`, `legend-bps-${h}`]) $(id).classList.toggle("off", !on);
    }
    const iface = $("f-iface");
    const chosen = iface.value;
    iface.replaceChildren(el("option", { text: "any", attrs: { value: "" } }));
    // A name is listed once even if it went and came back (detached and attached entries).
    for (const name of new Set(status.interfaces.map((i) => i.name))) {
      iface.append(el("option", { text: name, attrs: { value: name } }));
    }
    iface.value = chosen;
    this.showLosses(Object.fromEntries(status.counters.map((c) => [c.name, c.value])));
  }

  /** The stream stopped (hidden tab, lost connection): the next frame starts a new line. */
  pause() {
    if (this.prev) {
      this.ppsChart.push(this.prev.time_ms + 1, null);
      this.bpsChart.push(this.prev.time_ms + 1, null);
    }
    this.prev = null;
  }

  /** One stream frame. */
  frame(doc) {
    const prev = this.prev;
    const dt = prev ? (doc.time_ms - prev.time_ms) / 1000 : 0;
    if (prev && dt > 0) {
      const rate = (h, f) => Math.max(0, (doc.directions[h][f] - prev.directions[h][f]) / dt);
      this.ppsChart.push(doc.time_ms, this.hooks.map((h) => rate(h, "packets")));
      this.bpsChart.push(doc.time_ms, this.hooks.map((h) => rate(h, "bytes") * 8));
      for (const h of this.hooks) {
        const p = rate(h, "packets");
        const b = rate(h, "bytes") * 8;
        const pl = $(`legend-pps-${h}`).querySelector(".v");
        pl.textContent = pps(p);
        pl.title = `${p.toFixed(1)} packets/s; ${exact(doc.directions[h].packets)} packets since attached`;
        const bl = $(`legend-bps-${h}`).querySelector(".v");
        bl.textContent = bps(b);
        bl.title = `${exact(b)} bit/s; ${exact(doc.directions[h].bytes)} bytes since attached`;
      }
    }
    this.showProtocols(doc, prev, dt);
    this.showLosses(doc.losses);
    const before = new Map();
    if (prev) for (const r of this.rows) before.set(r.key, r);
    this.rows = doc.connections.map((c) => row(c, before, dt, doc.time_ms));
    this.prev = doc;
    this.showConnections();
    if (this.status) {
      const up = this.status.uptime_seconds + (performance.now() - this.statusAt) / 1000;
      const dd = document.querySelector('[data-fact="uptime"]');
      dd.textContent = duration(up);
      dd.title = `${exact(up)} s`;
    }
    $("totals").textContent = `${count(doc.total_packets)} packets, ${bytes(doc.total_bytes)} since attached`;
    $("totals").title = `${exact(doc.total_packets)} packets, ${exact(doc.total_bytes)} bytes (the kernel's exact totals)`;
  }

  showProtocols(doc, prev, dt) {
    const total = PROTOCOLS.reduce((a, [k]) => a + doc.protocols[k], 0);
    const bar = $("proto-bar");
    bar.replaceChildren();
    const body = $("proto-table").tBodies[0];
    body.replaceChildren();
    for (const [k, name] of PROTOCOLS) {
      const n = doc.protocols[k];
      const share = total ? n / total : 0;
      if (n) {
        const seg = el("span", { cls: `seg p-${k}`, title: `${name}: ${exact(n)} packets (${(share * 100).toFixed(1)} %)` });
        seg.style.width = `${share * 100}%`;
        bar.append(seg);
      }
      const now = prev && dt > 0 ? Math.max(0, (n - prev.protocols[k]) / dt) : null;
      const tr = el("tr");
      const key = el("th", { attrs: { scope: "row" } });
      key.append(el("span", { cls: `swatch p-${k}` }), name);
      tr.append(
        key,
        el("td", { cls: "num", text: now === null ? "—" : pps(now), title: now === null ? "" : `${now.toFixed(1)} packets/s` }),
        el("td", { cls: "num", text: count(n), title: `${exact(n)} packets` }),
        el("td", { cls: "num", text: `${(share * 100).toFixed(1)} %`, title: `${exact(n)} of ${exact(total)} packets` }),
      );
      body.append(tr);
    }
  }

  showLosses(values) {
    const list = $("loss-list");
    const help = new Map((this.status?.counters || []).map((c) => [c.name, c.help]));
    const names = Object.keys(values);
    if (list.childElementCount !== names.length) {
      list.replaceChildren();
      for (const name of names) {
        const li = el("li", { attrs: { "data-name": name } });
        const head = el("div", { cls: "loss-head" });
        head.append(el("span", { cls: "loss-name", text: LOSS_NAMES[name] || name, title: name }), el("span", { cls: "loss-value num" }));
        li.append(head, el("p", { cls: "help", text: help.get(name) || "" }));
        list.append(li);
      }
    }
    let bad = 0;
    for (const li of list.children) {
      const v = values[li.dataset.name] ?? 0;
      const out = li.querySelector(".loss-value");
      out.textContent = count(v);
      out.title = `${exact(v)} (${li.dataset.name})`;
      li.classList.toggle("bad", v > 0);
      if (v > 0) bad += 1;
      const h = help.get(li.dataset.name);
      if (h) li.querySelector(".help").textContent = h;
    }
    const summary = $("loss-summary");
    summary.textContent = bad ? `${bad} not zero: some views are incomplete (the packet and byte totals stay exact)` : "all zero: nothing lost";
    summary.classList.toggle("bad", bad > 0);
  }

  showConnections() {
    const addr = $("f-addr").value.trim().toLowerCase();
    const portText = $("f-port").value.trim();
    const port = portText === "" ? null : Number(portText);
    const proto = $("f-proto").value;
    const iface = $("f-iface").value;
    const dir = $("f-dir").value;
    const known = new Set(["TCP", "UDP", "ICMP", "ICMPv6"]);
    const rows = this.rows.filter(
      (r) =>
        (!addr || r.srcHost.toLowerCase().includes(addr) || r.dstHost.toLowerCase().includes(addr)) &&
        (port === null || r.srcPort === port || r.dstPort === port) &&
        (!proto || (proto === "other" ? !known.has(r.proto) : r.proto === proto)) &&
        (!iface || r.iface === iface) &&
        (!dir || (dir === "ingress" ? r.inPackets > 0 : r.outPackets > 0)),
    );
    this.table.render(rows);
    $("conn-count").textContent =
      rows.length === this.rows.length
        ? `${rows.length} connections (the stream's top 50 by packets)`
        : `${rows.length} of ${this.rows.length} connections match`;
  }
}

/** A table row from one connection of the frame, with its rate since the previous frame. */
function row(c, before, dt, nowMs) {
  const s = c.stats;
  const iface = c.connection.interface;
  // One connection is a row per interface it was seen on.
  const key = `${c.connection.proto} ${c.connection.src} ${c.connection.dst} ${iface}`;
  const [srcHost, srcPort] = endpoint(c.connection.src);
  const [dstHost, dstPort] = endpoint(c.connection.dst);
  const old = before.get(key);
  const rate = old && dt > 0;
  return {
    key,
    proto: c.connection.proto,
    src: c.connection.src,
    dst: c.connection.dst,
    srcHost,
    srcPort,
    dstHost,
    dstPort,
    iface,
    packets: s.packets_count,
    bytes: s.bytes_count,
    inPackets: s.ingress_packets,
    outPackets: s.egress_packets,
    inBytes: s.ingress_bytes,
    outBytes: s.egress_bytes,
    firstSeen: s.first_seen,
    lastSeen: s.last_seen,
    nowMs,
    pps: rate ? Math.max(0, (s.packets_count - old.packets) / dt) : null,
    bps: rate ? Math.max(0, ((s.bytes_count - old.bytes) * 8) / dt) : null,
  };
}

function columns() {
  const dirOf = (r) => (r.inPackets && r.outPackets ? "both" : r.inPackets ? "in" : "out");
  return [
    { key: "proto", label: "Protocol", sort: (r) => r.proto, cell: (r) => ({ text: r.proto, value: r.proto }) },
    { key: "src", label: "Source", sort: (r) => r.src, cell: (r) => ({ text: r.src, cls: "addr", value: r.src }) },
    { key: "dst", label: "Destination", sort: (r) => r.dst, cell: (r) => ({ text: r.dst, cls: "addr", value: r.dst }) },
    {
      key: "dir",
      label: "Hook",
      cell: (r) => ({
        text: dirOf(r),
        title: `ingress: ${exact(r.inPackets)} packets, ${exact(r.inBytes)} bytes\negress: ${exact(r.outPackets)} packets, ${exact(r.outBytes)} bytes${r.iface ? `\non ${r.iface}` : ""}`,
        value: dirOf(r),
      }),
    },
    {
      key: "packets",
      label: "Packets",
      numeric: true,
      sort: (r) => r.packets,
      cell: (r) => ({ text: count(r.packets), title: `${exact(r.packets)} packets`, value: r.packets }),
    },
    {
      key: "bytes",
      label: "Bytes",
      numeric: true,
      sort: (r) => r.bytes,
      cell: (r) => ({ text: bytes(r.bytes), title: `${exact(r.bytes)} bytes`, value: r.bytes }),
    },
    {
      key: "rate",
      label: "Rate",
      numeric: true,
      sort: (r) => r.bps,
      cell: (r) =>
        r.bps === null
          ? { text: "—", title: "no rate yet: seen in one frame only", value: "" }
          : { text: bps(r.bps), title: `${exact(r.bps)} bit/s, ${r.pps.toFixed(1)} packets/s`, value: r.bps },
    },
    {
      key: "last_seen",
      label: "Last seen",
      numeric: true,
      sort: (r) => r.lastSeen,
      cell: (r) => ({
        text: `${duration(Math.max(0, r.nowMs / 1000 - r.lastSeen))} ago`,
        title: `last ${iso(r.lastSeen * 1000)}\nfirst ${iso(r.firstSeen * 1000)}`,
        value: r.lastSeen,
      }),
    },
  ];
}
