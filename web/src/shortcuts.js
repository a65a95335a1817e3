// Keyboard shortcuts in one table, read both by the key handler and by the help overlay (`?`).
// Ctrl also means Cmd on a Mac. Keys pressed while typing in a text field reach only the shortcuts
// marked `typing` (queue, save, open): the rest belong to the text.

const table = [];
// litegraph's own keys and gestures, listed in the help but handled by litegraph.
const BUILT_IN = [
  ["Ctrl+C / Ctrl+V", "Copy / paste the selected nodes (Ctrl+Shift+V keeps their input links)"],
  ["Ctrl+A", "Select every node"],
  ["Delete", "Delete the selected nodes"],
  ["Double-click", "Search nodes to add (on empty canvas)"],
  ["Drop a link on empty canvas", "Search nodes that fit it; the chosen one arrives linked"],
  ["Space + drag, or drag empty canvas", "Pan"],
  ["Wheel", "Zoom"],
];

function parse(keys) {
  const parts = keys.split("+");
  const key = parts.pop().toLowerCase();
  return { key, ctrl: parts.includes("Ctrl"), shift: parts.includes("Shift"), alt: parts.includes("Alt") };
}

function matches(k, e) {
  const key = e.key.toLowerCase();
  const shiftMatters = /^[a-z0-9]$/.test(k.key) || k.key.length > 1; // "?" comes with whatever Shift makes it
  const code = e.code?.startsWith("Key") ? e.code.slice(3).toLowerCase() : key; // Alt+C types "ç" on a Mac
  return (key === k.key || (k.alt && code === k.key)) && (e.ctrlKey || e.metaKey) === k.ctrl && e.altKey === k.alt
    && (!shiftMatters || e.shiftKey === k.shift);
}

/** Register `run` for `keys` ("Ctrl+Shift+Z", "Alt+C", "?"); `run` returning false lets the key through. */
export function shortcut(keys, label, run, { typing = false } = {}) {
  table.push({ keys, label, run, typing, parsed: parse(keys) });
}

/** Listen on the document in the capture phase (litegraph stops some keys on the canvas). `after` sees
 * every key no shortcut took. */
export function listenForShortcuts(after = () => {}) {
  document.addEventListener("keydown", (e) => {
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(e.target.tagName) || e.target.isContentEditable;
    const hit = table.find((s) => (s.typing || !typing) && matches(s.parsed, e));
    if (hit && hit.run(e) !== false) {
      e.preventDefault();
      e.stopPropagation();
      return;
    }
    if (!typing) after(e);
  }, true);
}

/** The help overlay: every shortcut registered here, then litegraph's own. */
export function toggleHelp() {
  let el = document.getElementById("shortcut-help");
  if (el) return void el.remove();
  el = Object.assign(document.createElement("div"), { id: "shortcut-help", className: "modal-backdrop" });
  const box = Object.assign(document.createElement("div"), { className: "modal" });
  box.setAttribute("role", "dialog");
  box.append(Object.assign(document.createElement("h2"), { textContent: "Keyboard shortcuts" }));
  const list = document.createElement("dl");
  for (const [keys, label] of [...table.map((s) => [s.keys, s.label]), ...BUILT_IN]) {
    list.append(Object.assign(document.createElement("dt"), { textContent: keys }),
      Object.assign(document.createElement("dd"), { textContent: label }));
  }
  box.append(list, Object.assign(document.createElement("p"), { className: "muted", textContent: "Esc or ? closes this." }));
  el.append(box);
  el.onclick = (e) => { if (e.target === el) el.remove(); };
  document.body.append(el);
}
