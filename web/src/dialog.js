// Small modal dialogs in the page (never the browser's prompt/confirm, which block the page and
// cannot be styled): ask for a name, or ask to confirm. Each resolves with the answer, or null /
// false when dismissed (Escape, Cancel, a click outside).

function modal({ ok: okLabel = "OK", fill }) {
  return new Promise((resolve) => {
    const backdrop = Object.assign(document.createElement("div"), { className: "modal-backdrop" });
    const box = Object.assign(document.createElement("form"), { className: "modal" });
    box.setAttribute("role", "dialog");
    const done = (value) => { backdrop.remove(); resolve(value); };
    const { focus, value, empty } = fill(box);
    const buttons = Object.assign(document.createElement("div"), { className: "modal-buttons" });
    const cancel = Object.assign(document.createElement("button"), { type: "button", textContent: "Cancel" });
    const ok = Object.assign(document.createElement("button"), { type: "submit", className: "primary", textContent: okLabel });
    cancel.onclick = () => done(empty);
    buttons.append(cancel, ok);
    box.append(buttons);
    box.onsubmit = (e) => { e.preventDefault(); done(value()); };
    box.onkeydown = (e) => { if (e.key === "Escape") { e.stopPropagation(); done(empty); } };
    backdrop.onpointerdown = (e) => { if (e.target === backdrop) done(empty); };
    backdrop.append(box);
    document.body.append(backdrop);
    (focus ?? ok).focus();
    focus?.select?.();
  });
}

/** Ask for a line of text; resolves to the trimmed text, or null. */
export function askText(title, initial = "", ok = "OK") {
  return modal({ ok, fill: (box) => {
    const input = Object.assign(document.createElement("input"), { type: "text", value: initial, required: true });
    input.setAttribute("aria-label", title);
    box.append(Object.assign(document.createElement("h2"), { textContent: title }), input);
    return { focus: input, value: () => input.value.trim() || null, empty: null };
  } });
}

/** Ask a yes/no question; resolves to true or false. */
export function confirmDialog(message, ok = "OK") {
  return modal({ ok, fill: (box) => {
    box.append(Object.assign(document.createElement("p"), { textContent: message }));
    return { value: () => true, empty: false };
  } });
}

/** Edit a label's text in place: it becomes a text field; Enter or leaving it calls `commit(text)` with
 * a changed, non-empty text, Escape cancels. The label comes back either way. */
export function editInPlace(label, value, commit) {
  const input = Object.assign(document.createElement("input"), { className: "rename", value });
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    const text = input.value.trim();
    input.replaceWith(label);
    if (keep && text && text !== value) commit(text);
  };
  input.onkeydown = (e) => {
    if (e.key === "Enter") finish(true);
    else if (e.key === "Escape") finish(false);
    e.stopPropagation();
  };
  input.onblur = () => finish(true);
  input.onclick = (e) => e.stopPropagation();
  input.ondblclick = (e) => e.stopPropagation();
  label.replaceWith(input);
  input.focus();
  input.select();
}
