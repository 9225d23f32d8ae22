// A table whose rows are rebuilt from data: columns that sort on a click (or Enter/Space on
// the header's button, with `aria-sort` set), cells with an exact-value `title`.

import { el } from "./format.js";

/**
 * `columns`: [{key, label, numeric, sort (row -> number|string, absent: not sortable),
 * cell (row -> {text, title, cls})}]. `rowKey(row)` names a row (`data-key`).
 */
export class Table {
  constructor(table, columns, { sortKey = null, descending = true, rowKey, empty = "nothing to show" } = {}) {
    this.table = table;
    this.columns = columns;
    this.sortKey = sortKey;
    this.descending = descending;
    this.rowKey = rowKey;
    this.empty = empty;
    this.rows = [];
    const head = el("tr");
    this.headers = columns.map((c) => {
      const th = el("th", { cls: c.numeric ? "num" : "", attrs: { scope: "col" } });
      th.dataset.key = c.key;
      if (c.sort) {
        const b = el("button", { text: c.label, attrs: { type: "button" } });
        b.addEventListener("click", () => this.sortBy(c.key));
        th.append(b);
      } else {
        th.textContent = c.label;
      }
      head.append(th);
      return th;
    });
    table.tHead?.remove();
    table.createTHead().append(head);
    this.body = table.tBodies[0] || table.createTBody();
    this.markSort();
  }

  /** Sorts by column `key`; the same column again flips the order. */
  sortBy(key) {
    if (this.sortKey === key) this.descending = !this.descending;
    else {
      this.sortKey = key;
      const c = this.columns.find((x) => x.key === key);
      this.descending = !!c.numeric;
    }
    this.markSort();
    this.render(this.rows);
  }

  markSort() {
    for (const th of this.headers) {
      const on = th.dataset.key === this.sortKey;
      if (on) th.setAttribute("aria-sort", this.descending ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    }
  }

  /** Shows `rows`, sorted by the current column. */
  render(rows) {
    this.rows = rows;
    let shown = rows;
    const c = this.columns.find((x) => x.key === this.sortKey);
    if (c && c.sort) {
      const dir = this.descending ? -1 : 1;
      shown = rows
        .map((r, i) => [c.sort(r), i, r])
        .sort((a, b) => {
          const [x, y] = [a[0], b[0]];
          const cmp = x === y ? 0 : x === null || x === undefined ? 1 : y === null || y === undefined ? -1 : x < y ? -1 : 1;
          // Missing values last in either order; ties keep the given order.
          if (cmp && (x === null || y === null || x === undefined || y === undefined)) return cmp;
          return cmp * dir || a[1] - b[1];
        })
        .map((x) => x[2]);
    }
    const frag = document.createDocumentFragment();
    for (const r of shown) {
      const tr = el("tr");
      if (this.rowKey) tr.dataset.key = this.rowKey(r);
      for (const col of this.columns) {
        const { text, title, cls, value } = col.cell(r);
        const td = el("td", { text, title, cls: [col.numeric ? "num" : "", cls || ""].join(" ").trim() || undefined });
        td.dataset.col = col.key;
        if (value !== undefined) td.dataset.value = String(value);
        tr.append(td);
      }
      frag.append(tr);
    }
    if (!shown.length) {
      const tr = el("tr");
      tr.append(el("td", { text: this.empty, cls: "empty", attrs: { colspan: String(this.columns.length) } }));
      frag.append(tr);
    }
    this.body.replaceChildren(frag);
    return shown;
  }
}
