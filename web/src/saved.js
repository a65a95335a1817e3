// The Workflows sidebar: workflows saved on the server (ComfyUI's user data, `workflows/*.json`), to
// open (or switch to, when open already), rename in place and delete.
import { savedName } from "./workflows.js";
import { editInPlace } from "./dialog.js";

export class SavedWorkflows {
  constructor(api, workspace, list) {
    Object.assign(this, { api, workspace, list });
  }

  async refresh() {
    let files;
    try {
      files = await this.api.listUserdata("workflows");
    } catch (err) {
      return void this.list.replaceChildren(Object.assign(document.createElement("li"), { textContent: err.message }));
    }
    const paths = files.map((f) => `workflows/${f.path}`).filter((p) => p.endsWith(".json")).sort();
    const open = new Set(this.workspace.tabs.map((t) => t.path));
    this.list.replaceChildren(...paths.map((path) => this.#row(path, open.has(path))));
    if (!paths.length) {
      this.list.append(Object.assign(document.createElement("li"), { className: "none", textContent: "Nothing saved yet: Ctrl+S saves the open workflow here." }));
    }
  }

  #row(path, isOpen) {
    const li = document.createElement("li");
    li.dataset.path = path;
    if (isOpen) li.classList.add("open");
    const label = Object.assign(document.createElement("span"), { className: "label", textContent: savedName(path), title: `Open ${savedName(path)}` });
    label.onclick = () => this.workspace.openSaved(path).catch((err) => this.workspace.toast(err.message, "error"));
    const button = (text, title, fn) => {
      const b = Object.assign(document.createElement("button"), { textContent: text, title });
      b.onclick = (e) => { e.stopPropagation(); fn(); };
      return b;
    };
    li.append(label,
      button("✎", "Rename", () => editInPlace(label, savedName(path), (name) => this.workspace.renameSaved(path, name))),
      button("✕", "Delete", () => this.workspace.deleteSaved(path)));
    return li;
  }
}
