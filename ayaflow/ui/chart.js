// Charts drawn on <canvas>: lines over a sliding time window (live) and bars over buckets
// (history). Colours come from the page's CSS variables, so both follow light and dark mode.
// The exact values under the pointer go to the canvas's `title`; `data-samples` and
// `data-last` say how many points the chart holds and the time of the newest.

function css(el, name) {
  return getComputedStyle(el).getPropertyValue(name).trim();
}

/** A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`. */
function niceMax(max) {
  if (!(max > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 5, 10]) if (m * p >= max) return m * p;
  return 10 * p;
}

/** Sizes the canvas for its CSS box and the screen's pixel ratio; returns the 2D context. */
function prepare(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
  return ctx;
}

/** Draws the y grid with labels; returns the plot box. */
function axes(canvas, ctx, yMax, format) {
  const W = canvas.clientWidth;
  const H = canvas.clientHeight;
  ctx.font = `11px ${css(canvas, "--font") || "sans-serif"}`;
  const labels = [0, 1, 2, 3, 4].map((i) => format((yMax * i) / 4));
  const left = Math.ceil(Math.max(...labels.map((l) => ctx.measureText(l).width))) + 8;
  const box = { x: left, y: 6, w: Math.max(10, W - left - 6), h: Math.max(10, H - 26) };
  ctx.strokeStyle = css(canvas, "--grid");
  ctx.fillStyle = css(canvas, "--muted");
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  labels.forEach((label, i) => {
    const y = Math.round(box.y + box.h - (box.h * i) / 4) + 0.5;
    ctx.beginPath();
    ctx.moveTo(box.x, y);
    ctx.lineTo(box.x + box.w, y);
    ctx.stroke();
    ctx.fillText(label, box.x - 4, y);
  });
  return box;
}

/** Time labels along the bottom of `box`, for times t0..t1 (ms). */
function timeLabels(canvas, ctx, box, t0, t1, label) {
  const n = Math.max(2, Math.min(6, Math.floor(box.w / 90)));
  ctx.fillStyle = css(canvas, "--muted");
  ctx.textBaseline = "top";
  for (let i = 0; i <= n; i += 1) {
    const t = t0 + ((t1 - t0) * i) / n;
    ctx.textAlign = i === 0 ? "left" : i === n ? "right" : "center";
    ctx.fillText(label(t), box.x + (box.w * i) / n, box.y + box.h + 6);
  }
}

/**
 * Lines over the last `windowMs`: `series` is [{name, color (a CSS variable)}], `format`
 * turns a value into axis text, `exact` into the title's text.
 */
export class LineChart {
  constructor(canvas, { series, windowMs, format, exact }) {
    this.canvas = canvas;
    this.series = series;
    this.windowMs = windowMs;
    this.format = format;
    this.exact = exact;
    this.points = []; // [t, values[] | null (a gap)]
    this.hover = null;
    new ResizeObserver(() => this.draw()).observe(canvas);
    canvas.addEventListener("mousemove", (e) => {
      this.hover = e.offsetX;
      this.describe();
    });
    canvas.addEventListener("mouseleave", () => {
      this.hover = null;
      this.describe();
    });
  }

  /** Adds the values at time `t` (ms), `null` for a gap (the stream was paused). */
  push(t, values) {
    this.points.push([t, values]);
    const start = t - this.windowMs;
    while (this.points.length > 2 && this.points[1][0] < start) this.points.shift();
    this.canvas.dataset.samples = String(this.points.filter((p) => p[1]).length);
    this.canvas.dataset.last = String(t);
    this.draw();
    this.describe();
  }

  /** The newest values, or null. */
  latest() {
    for (let i = this.points.length - 1; i >= 0; i -= 1) if (this.points[i][1]) return this.points[i][1];
    return null;
  }

  describe() {
    const real = this.points.filter((p) => p[1]);
    if (!real.length) {
      this.canvas.title = "no data yet";
      return;
    }
    let p = real[real.length - 1];
    if (this.hover !== null && this.box) {
      const t = this.t0 + ((this.hover - this.box.x) / this.box.w) * this.windowMs;
      p = real.reduce((a, b) => (Math.abs(b[0] - t) < Math.abs(a[0] - t) ? b : a));
    }
    const when = new Date(p[0]).toLocaleTimeString();
    this.canvas.title = `${when}\n${this.series.map((s, i) => `${s.name}: ${this.exact(p[1][i])}`).join("\n")}`;
  }

  draw() {
    const c = this.canvas;
    if (!c.clientWidth) return;
    const ctx = prepare(c);
    const t1 = this.points.length ? this.points[this.points.length - 1][0] : Date.now();
    const t0 = t1 - this.windowMs;
    let max = 0;
    for (const [, v] of this.points) if (v) for (const x of v) max = Math.max(max, x);
    const yMax = niceMax(max);
    const box = axes(c, ctx, yMax, this.format);
    this.box = box;
    this.t0 = t0;
    timeLabels(c, ctx, box, t0, t1, (t) => {
      const ago = Math.round((t1 - t) / 1000);
      return ago === 0 ? "now" : ago % 60 === 0 ? `-${ago / 60} min` : `-${ago} s`;
    });
    const x = (t) => box.x + ((t - t0) / this.windowMs) * box.w;
    const y = (v) => box.y + box.h - (v / yMax) * box.h;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    this.series.forEach((s, i) => {
      ctx.strokeStyle = css(c, s.color);
      ctx.beginPath();
      let pen = false;
      for (const [t, v] of this.points) {
        if (!v || t < t0) {
          pen = false;
          continue;
        }
        if (pen) ctx.lineTo(x(t), y(v[i]));
        else ctx.moveTo(x(t), y(v[i]));
        pen = true;
      }
      ctx.stroke();
    });
  }
}

/**
 * Bars over equal buckets of [t0, t1) (ms): `values[i]` is bucket i's total. `format` for the
 * axis, `exact` for the title.
 */
export class BarChart {
  constructor(canvas, { color, format, exact }) {
    this.canvas = canvas;
    this.color = color;
    this.format = format;
    this.exact = exact;
    this.values = [];
    this.t0 = 0;
    this.t1 = 0;
    new ResizeObserver(() => this.draw()).observe(canvas);
    canvas.addEventListener("mousemove", (e) => this.describe(e.offsetX));
    canvas.addEventListener("mouseleave", () => this.describe(null));
  }

  /** Empties the chart (a new query is loading). */
  clear() {
    this.values = [];
    delete this.canvas.dataset.samples;
    delete this.canvas.dataset.total;
    this.draw();
    this.describe(null);
  }

  set(t0, t1, values) {
    this.t0 = t0;
    this.t1 = t1;
    this.values = values;
    this.canvas.dataset.samples = String(values.length);
    this.canvas.dataset.total = String(values.reduce((a, b) => a + b, 0));
    this.draw();
    this.describe(null);
  }

  describe(px) {
    const n = this.values.length;
    if (!n || !this.box) {
      this.canvas.title = "no data";
      return;
    }
    const total = this.values.reduce((a, b) => a + b, 0);
    if (px === null) {
      this.canvas.title = `total over the range: ${this.exact(total)}`;
      return;
    }
    const i = Math.min(n - 1, Math.max(0, Math.floor(((px - this.box.x) / this.box.w) * n)));
    const step = (this.t1 - this.t0) / n;
    const a = new Date(this.t0 + i * step).toLocaleString();
    const b = new Date(this.t0 + (i + 1) * step).toLocaleTimeString();
    this.canvas.title = `${a} – ${b}\n${this.exact(this.values[i])}`;
  }

  draw() {
    const c = this.canvas;
    if (!c.clientWidth) return;
    const ctx = prepare(c);
    const yMax = niceMax(Math.max(0, ...this.values));
    const box = axes(c, ctx, yMax, this.format);
    this.box = box;
    const span = this.t1 - this.t0;
    if (span > 0) {
      const long = span > 36 * 3600 * 1000;
      timeLabels(c, ctx, box, this.t0, this.t1, (t) => {
        const d = new Date(t);
        const hm = `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
        return long ? `${d.getMonth() + 1}/${d.getDate()} ${hm}` : hm;
      });
    }
    const n = this.values.length;
    if (!n) return;
    const w = box.w / n;
    ctx.fillStyle = css(c, this.color);
    this.values.forEach((v, i) => {
      if (!v) return;
      const h = Math.max(1, (v / yMax) * box.h);
      ctx.fillRect(box.x + i * w + (w > 4 ? 1 : 0), box.y + box.h - h, Math.max(1, w - (w > 4 ? 2 : 0)), h);
    });
  }
}
