// Loaded first, as a classic script: keeps every error the page meets in window.ayaflowErrors
// (uncaught exceptions, rejections nobody handled, files that failed to load, CSP violations,
// console.error). The browser tests read it, in Chromium and Firefox alike (W3C WebDriver has
// no console log); so can anyone in the browser's console.
"use strict";
(() => {
  const errors = [];
  window.ayaflowErrors = errors;
  const keep = (text) => errors.push(String(text));
  // Capturing: a file that failed to load fires on its element, without bubbling.
  window.addEventListener(
    "error",
    (e) => {
      const el = e.target;
      if (el instanceof Element) keep(`failed to load ${el.src || el.href || el.tagName}`);
      else keep(`${e.message} (${e.filename}:${e.lineno}:${e.colno})`);
    },
    true,
  );
  window.addEventListener("unhandledrejection", (e) =>
    keep(`unhandled rejection: ${e.reason?.stack || e.reason}`),
  );
  document.addEventListener("securitypolicyviolation", (e) =>
    keep(`CSP ${e.violatedDirective} blocked ${e.blockedURI}`),
  );
  const error = console.error.bind(console);
  console.error = (...args) => {
    keep(args.map(String).join(" "));
    error(...args);
  };
})();
