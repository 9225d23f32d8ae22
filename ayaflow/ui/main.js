// The page's entry point: loads /api/status, switches between the live and history views
// (#live, #history), and keeps the stream open only while the live view is visible: a hidden
// tab (visibilitychange) or the history view closes it, so the page then costs the agent
// nothing.

import { getJson, stream } from "./api.js";
import { HistoryView } from "./history.js";
import { LiveView } from "./live.js";

const $ = (id) => document.getElementById(id);

const live = new LiveView();
const history = new HistoryView();

function setState(text, ok) {
  const s = $("conn-state");
  s.textContent = text;
  s.classList.toggle("ok", !!ok);
}

const frames = stream({
  onFrame: (doc) => live.frame(doc),
  onState: setState,
});

async function loadStatus() {
  try {
    const status = await getJson("/api/status");
    live.setStatus(status);
    history.setStatus(status);
    document.title = `ayaFlow: ${status.interfaces.map((i) => i.name).join(", ") || "no interface"}`;
  } catch (e) {
    setState(`status: ${e.message}`, false);
  }
}

function view() {
  return location.hash === "#history" ? "history" : "live";
}

/** Shows the view of the URL's hash; the stream runs only for a visible live view. */
function route() {
  const v = view();
  $("view-live").hidden = v !== "live";
  $("view-history").hidden = v !== "history";
  for (const name of ["live", "history"]) {
    const tab = $(`tab-${name}`);
    if (name === v) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  if (v === "history") history.shown();
  update();
}

function update() {
  if (document.hidden) {
    frames.stop("paused: the tab is hidden");
    live.pause();
  } else if (view() !== "live") {
    frames.stop("paused: the live view is closed");
    live.pause();
  } else {
    frames.start();
  }
}

window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", update);

await loadStatus();
route();
