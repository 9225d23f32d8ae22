// The history view: a time range (presets or custom) and the /api/history filters, a chart of
// packets and bytes over the range (windows where the agent stores windows, raw rows bucketed
// otherwise), the rows page by page through `next_cursor`, and a CSV of the page shown.

import { getJson } from "./api.js";
import { BarChart } from "./chart.js";
import { Table } from "./table.js";
import { bytes, count, dateTime, exact, iso, localInput } from "./format.js";

/** Buckets of the chart. */
const BUCKETS = 60;
/** Rows the chart reads at most (pages of 10,000): beyond, it shows the newest ones. */
const CHART_ROWS = 50000;
const PRESETS = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
const TCP_FLAGS = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];

const $ = (id) => document.getElementById(id);

export class HistoryView {
  constructor() {
    this.query = null;
    this.cursors = [null];
    this.page = 0;
    this.rows = [];
    this.kind = "raw";
    this.csvUrl = null;
    this.loaded = false;
    this.chartAbort = null;
    this.packets = new BarChart($("chart-h-packets"), { color: "--s1", format: count, exact: (v) => `${exact(v)} packets` });
    this.bytes = new BarChart($("chart-h-bytes"), { color: "--s2", format: bytes, exact: (v) => `${exact(v)} bytes` });
    $("history-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.search();
    });
    $("h-range").addEventListener("input", () => this.syncRange());
    $("h-older").addEventListener("click", () => this.go(this.page + 1));
    $("h-newer").addEventListener("click", () => this.go(this.page - 1));
    this.syncRange();
  }

  /** The agent's default history kind, from /api/status. */
  setStatus(status) {
    if (!this.loaded) $("h-kind").value = status.history;
  }

  /** Shown for the first time: runs the default query. */
  shown() {
    if (!this.loaded) {
      this.loaded = true;
      this.search();
    }
  }

  /** Custom range: the inputs are editable; a preset: they show its range. */
  syncRange() {
    const preset = PRESETS[$("h-range").value];
    for (const id of ["h-from", "h-to"]) $(id).disabled = !!preset;
    if (preset) {
      const now = Math.floor(Date.now() / 1000);
      $("h-from").value = localInput(now - preset);
      $("h-to").value = localInput(now + 60);
    }
  }

  /** The range [from, to) in Unix seconds, from the form. */
  range() {
    const preset = PRESETS[$("h-range").value];
    if (preset) {
      const to = Math.floor(Date.now() / 1000) + 1;
      return [to - preset, to];
    }
    const from = Math.floor(new Date($("h-from").value).getTime() / 1000);
    const to = Math.floor(new Date($("h-to").value).getTime() / 1000);
    if (!Number.isFinite(from) || !Number.isFinite(to)) throw new Error("enter both ends of the custom range");
    if (to <= from) throw new Error("the end of the range must come after its start");
    return [from, to];
  }

  /** Starts a new query from the form: page 1 and the chart. */
  async search() {
    let from;
    let to;
    try {
      this.syncRange();
      [from, to] = this.range();
    } catch (e) {
      this.error(e.message);
      return;
    }
    const p = new URLSearchParams({ from, to, kind: $("h-kind").value, limit: $("h-limit").value });
    for (const [id, name] of [
      ["h-addr", "addr"],
      ["h-port", "port"],
      ["h-proto", "proto"],
      ["h-iface", "interface"],
      ["h-dir", "direction"],
    ]) {
      const v = $(id).value.trim();
      if (v) p.set(name, v);
    }
    this.packets.clear();
    this.bytes.clear();
    this.query = { params: p, from, to };
    this.cursors = [null];
    this.kind = p.get("kind");
    this.table = new Table($("h-table"), columnsFor(this.kind), { rowKey: (r) => String(r.id), empty: "no rows in this range" });
    await this.go(0);
    this.chart();
  }

  /** Shows page `n` (0 is the newest). */
  async go(n) {
    if (!this.query || n < 0 || n >= this.cursors.length) return;
    const p = new URLSearchParams(this.query.params);
    if (this.cursors[n] !== null) p.set("before", this.cursors[n]);
    $("h-status").textContent = "loading…";
    let doc;
    try {
      doc = await getJson(`/api/history?${p}`);
    } catch (e) {
      this.error(e.message);
      return;
    }
    this.page = n;
    this.rows = doc.rows;
    this.cursors.length = n + 1;
    if (doc.next_cursor !== null) this.cursors.push(doc.next_cursor);
    this.table.render(doc.rows);
    $("h-older").disabled = doc.next_cursor === null;
    $("h-newer").disabled = n === 0;
    $("h-page").textContent = `page ${n + 1}: ${doc.rows.length} ${doc.kind} rows${doc.next_cursor === null ? ", the oldest" : ""}`;
    $("h-status").textContent = "";
    $("h-status").classList.remove("bad");
    this.csv(doc.rows);
  }

  error(message) {
    $("h-status").textContent = message;
    $("h-status").classList.add("bad");
  }

  /** The CSV link for `rows`: the columns of the table, exact values. */
  csv(rows) {
    const raw = this.kind === "raw";
    const head = raw
      ? ["id", "time_utc", "unix_seconds", "direction", "interface", "proto", "src", "dst", "packets", "bytes", "tcp_flags", "icmp_type", "icmp_code"]
      : ["id", "window_start_utc", "window_end_utc", "window_start", "window_end", "direction", "interface", "proto", "src", "dst", "packets", "bytes"];
    const line = (r) =>
      raw
        ? [r.id, iso(Math.floor(r.timestamp_ns / 1e6)), r.timestamp, r.direction, r.interface, r.proto, r.src, r.dst, r.packets, r.bytes, r.tcp_flags, r.icmp_type, r.icmp_code]
        : [r.id, iso(r.window_start * 1000), iso(r.window_end * 1000), r.window_start, r.window_end, r.direction, r.interface, r.proto, r.src, r.dst, r.packets, r.bytes];
    const quote = (v) => {
      const s = String(v);
      return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
    };
    const text = [head, ...rows.map(line)].map((f) => f.map(quote).join(",")).join("\n") + "\n";
    if (this.csvUrl) URL.revokeObjectURL(this.csvUrl);
    this.csvUrl = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    const a = $("h-csv");
    a.href = this.csvUrl;
    const stamp = new Date(this.query.from * 1000).toISOString().slice(0, 16).replace(/[-:]/g, "");
    a.download = `ayaflow-history-${this.kind}-${stamp}-page${this.page + 1}.csv`;
    a.title = `${rows.length} rows, the page shown`;
  }

  /** Reads up to CHART_ROWS rows of the range and draws them in BUCKETS buckets. */
  async chart() {
    this.chartAbort?.abort();
    const abort = new AbortController();
    this.chartAbort = abort;
    const { from, to } = this.query;
    const p = new URLSearchParams(this.query.params);
    p.set("limit", "10000");
    const packets = new Array(BUCKETS).fill(0);
    const byteSums = new Array(BUCKETS).fill(0);
    const span = to - from;
    let rows = 0;
    let oldest = null;
    let more = true;
    this.packets.clear();
    this.bytes.clear();
    $("chart-note").textContent = "loading…";
    try {
      while (more && rows < CHART_ROWS) {
        const doc = await getJson(`/api/history?${p}`, { signal: abort.signal });
        for (const r of doc.rows) {
          const t = this.kind === "raw" ? r.timestamp_ns / 1e9 : r.window_start;
          const i = Math.min(BUCKETS - 1, Math.max(0, Math.floor(((t - from) / span) * BUCKETS)));
          packets[i] += r.packets;
          byteSums[i] += r.bytes;
          oldest = t;
        }
        rows += doc.rows.length;
        more = doc.next_cursor !== null;
        if (more) p.set("before", doc.next_cursor);
      }
    } catch (e) {
      if (abort.signal.aborted) return;
      $("chart-note").textContent = `chart: ${e.message}`;
      return;
    }
    if (abort.signal.aborted) return;
    this.packets.set(from * 1000, to * 1000, packets);
    this.bytes.set(from * 1000, to * 1000, byteSums);
    const what = this.kind === "raw" ? "raw rows, bucketed" : "windows (each at its start)";
    const bucket = Math.round(span / BUCKETS);
    $("chart-note").textContent = more
      ? `The newest ${exact(rows)} ${what}, back to ${dateTime(oldest)} only: narrow the range or the filters to chart all of it.`
      : `${exact(rows)} ${what} from ${dateTime(from)} to ${dateTime(to)}, ${bucket} s per bar.`;
  }
}

function flags(r) {
  if (r.proto === "TCP") {
    const names = TCP_FLAGS.filter((_, i) => r.tcp_flags & (1 << i));
    return { text: names.join(" "), title: `TCP flags 0x${r.tcp_flags.toString(16)}`, value: r.tcp_flags };
  }
  if (r.proto.startsWith("ICMP")) {
    return { text: `type ${r.icmp_type} code ${r.icmp_code}`, value: `${r.icmp_type}/${r.icmp_code}` };
  }
  return { text: "", value: "" };
}

function columnsFor(kind) {
  const common = [
    { key: "direction", label: "Hook", cell: (r) => ({ text: r.direction, value: r.direction }) },
    { key: "interface", label: "Interface", cell: (r) => ({ text: r.interface, value: r.interface }) },
    { key: "proto", label: "Protocol", cell: (r) => ({ text: r.proto, value: r.proto }) },
    { key: "src", label: "Source", cell: (r) => ({ text: r.src, cls: "addr", value: r.src }) },
    { key: "dst", label: "Destination", cell: (r) => ({ text: r.dst, cls: "addr", value: r.dst }) },
    { key: "packets", label: "Packets", numeric: true, cell: (r) => ({ text: count(r.packets), title: `${exact(r.packets)} packets`, value: r.packets }) },
    { key: "bytes", label: "Bytes", numeric: true, cell: (r) => ({ text: bytes(r.bytes), title: `${exact(r.bytes)} bytes`, value: r.bytes }) },
  ];
  if (kind === "raw") {
    return [
      {
        key: "time",
        label: "Time",
        cell: (r) => ({ text: dateTime(r.timestamp), title: iso(Math.floor(r.timestamp_ns / 1e6)), value: r.timestamp }),
      },
      ...common,
      { key: "flags", label: "Flags", cell: flags },
    ];
  }
  return [
    {
      key: "time",
      label: "Window",
      cell: (r) => ({
        text: `${dateTime(r.window_start)} +${r.window_end - r.window_start} s`,
        title: `${iso(r.window_start * 1000)} to ${iso(r.window_end * 1000)}`,
        value: r.window_start,
      }),
    },
    ...common,
  ];
}
