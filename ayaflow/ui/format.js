// Numbers and times as people read them: rates in SI units (kpps, Mbit/s), sizes in IEC
// units (KiB, MiB), with the exact value for each `title` attribute.

const SI = ["", "k", "M", "G", "T", "P"];
const IEC = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** `n` with thousands separators, exactly ("12,345"). */
export function exact(n) {
  return Math.round(n).toLocaleString("en-US");
}

/** `n` scaled by 1000s with three significant digits: [text, prefix]. */
function scaled(n, base, units) {
  let i = 0;
  let v = Math.abs(n);
  while (v >= base && i < units.length - 1) {
    v /= base;
    i += 1;
  }
  const sign = n < 0 ? "-" : "";
  const digits = i === 0 ? (Number.isInteger(v) ? 0 : v < 1 ? 2 : v < 10 ? 1 : 0) : v < 10 ? 2 : v < 100 ? 1 : 0;
  return [sign + v.toFixed(digits), units[i]];
}

/** A count: "950", "12.3 k", "4.56 M". */
export function count(n) {
  const [v, p] = scaled(n, 1000, SI);
  return p ? `${v} ${p}` : v;
}

/** Packets per second: "12 pps", "3.45 kpps". */
export function pps(n) {
  const [v, p] = scaled(n, 1000, SI);
  return `${v} ${p}pps`;
}

/** Bits per second: "800 bit/s", "12.3 Mbit/s". */
export function bps(n) {
  const [v, p] = scaled(n, 1000, SI);
  return `${v} ${p}bit/s`;
}

/** Bytes: "512 B", "1.50 KiB", "3.20 GiB". */
export function bytes(n) {
  const [v, u] = scaled(n, 1024, IEC);
  return `${v} ${u}`;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** Local time of a Unix time in seconds, "HH:MM:SS". */
export function clock(unixSeconds) {
  const d = new Date(unixSeconds * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Local date and time of a Unix time in seconds, "YYYY-MM-DD HH:MM:SS". */
export function dateTime(unixSeconds) {
  const d = new Date(unixSeconds * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(unixSeconds)}`;
}

/** ISO 8601 in UTC with milliseconds, for exact titles and the CSV. */
export function iso(unixMs) {
  return new Date(unixMs).toISOString();
}

/** A duration in seconds: "42 s", "5 min 3 s", "2 h 10 min", "3 d 4 h". */
export function duration(s) {
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${sec} s`;
  return `${sec} s`;
}

/** Splits "a.b.c.d:p" or "[v6]:p" into [host, port] (port a number, or NaN). */
export function endpoint(s) {
  const i = s.lastIndexOf(":");
  if (i < 0) return [s, NaN];
  const host = s.slice(0, i).replace(/^\[|\]$/g, "");
  return [host, Number(s.slice(i + 1))];
}

/** The value of `<input type=datetime-local>` for a Unix time in seconds (local time). */
export function localInput(unixSeconds) {
  const d = new Date(unixSeconds * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** Creates an element with a class, text and title. */
export function el(tag, { cls, text, title, attrs } = {}) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  if (title) e.title = title;
  if (attrs) for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}
