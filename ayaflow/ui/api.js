// The agent's public API, as the page uses it: JSON over fetch and the WS /api/stream frames.
//
// With an API token (--api-token-file), every request needs `Authorization: Bearer <token>`.
// A page load cannot send it, so the page asks for the token the first time a request gets
// 401, keeps it in this tab's sessionStorage (gone when the tab closes), and sends it on every
// fetch; the WebSocket, which cannot set headers, offers it as the subprotocol
// `ayaflow.bearer.<hex>` next to `ayaflow`.

const TOKEN_KEY = "ayaflow.token";

/** An error of the API, with its JSON `{error, hint}` when there is one. */
export class ApiError extends Error {
  constructor(status, error, hint) {
    super(hint ? `${error} (${hint})` : error);
    this.status = status;
    this.hint = hint;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

let asking = null;

/** Shows the token dialog and resolves once the user gave a token. */
function askToken(message) {
  if (asking) return asking;
  const dialog = document.getElementById("token-dialog");
  const form = dialog.querySelector("form");
  const input = dialog.querySelector("input");
  dialog.querySelector(".why").textContent = message;
  asking = new Promise((resolve) => {
    form.addEventListener(
      "submit",
      (e) => {
        e.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        input.value = "";
        dialog.close();
        asking = null;
        resolve();
      },
      { once: true },
    );
  });
  dialog.showModal();
  input.focus();
  return asking;
}

/** GET `path` as JSON, asking for the token on 401 and retrying. */
export async function getJson(path, { signal } = {}) {
  for (;;) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = `Bearer ${t}`;
    const r = await fetch(path, { headers, signal, cache: "no-store" });
    if (r.status === 401) {
      await askToken(t ? "That token was refused: enter the agent's API token." : "This agent asks for its API token.");
      continue;
    }
    let body = null;
    try {
      body = await r.json();
    } catch {
      body = null;
    }
    if (!r.ok) {
      throw new ApiError(r.status, body?.error || `HTTP ${r.status}`, body?.hint);
    }
    return body;
  }
}

function hex(text) {
  return Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Keeps a WebSocket to /api/stream open while `wanted()` is true, reconnecting with a growing
 * delay. `onFrame(doc)` gets each frame's document; `onState(text, ok)` the connection's state.
 * Returns { start, stop }.
 */
export function stream({ onFrame, onState }) {
  let ws = null;
  let retry = null;
  let delay = 1000;
  let running = false;

  function open() {
    clearTimeout(retry);
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/stream`;
    const t = token();
    const protocols = t ? ["ayaflow", `ayaflow.bearer.${hex(t)}`] : ["ayaflow"];
    const socket = new WebSocket(url, protocols);
    ws = socket;
    onState("connecting…", false);
    socket.onopen = () => {
      delay = 1000;
      onState("live", true);
    };
    socket.onmessage = (e) => {
      let doc;
      try {
        doc = JSON.parse(e.data);
      } catch {
        return;
      }
      onFrame(doc);
    };
    socket.onclose = () => {
      if (ws !== socket) return;
      ws = null;
      if (!running) return;
      onState(`disconnected, retrying in ${Math.round(delay / 1000)} s`, false);
      retry = setTimeout(open, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }

  return {
    start() {
      if (running) return;
      running = true;
      open();
    },
    stop(why) {
      running = false;
      clearTimeout(retry);
      if (ws) {
        const s = ws;
        ws = null;
        s.close(1000);
      }
      onState(why, false);
    },
  };
}
