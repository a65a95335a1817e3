// Node library sidebar: server node classes grouped by category, filtered by a fuzzy search box.
// Items are dragged onto the canvas (HTML drag and drop) or clicked to add at the view centre.
import { nodeFields, score } from "./fuzzy.js";

export const NODE_MIME = "application/x-latentgraph-node";

export function buildLibrary(objectInfo, { onPick }) {
  const search = document.getElementById("library-search");
  const tree = document.getElementById("library-tree");
  const entries = Object.entries(objectInfo).map(([type, info]) => ({
    type, title: info.display_name || type, category: info.category || "other",
    fields: nodeFields(type, info),
  }));

  function item(entry) {
    const el = document.createElement("div");
    el.className = "lib-node";
    el.textContent = entry.title;
    el.title = `${entry.type} — drag onto the canvas`;
    el.dataset.type = entry.type;
    el.draggable = true;
    el.addEventListener("dragstart", (e) => {
      e.dataTransfer.setData(NODE_MIME, entry.type);
      e.dataTransfer.effectAllowed = "copy";
    });
    el.addEventListener("click", () => onPick(entry.type));
    return el;
  }

  function render() {
    const query = search.value.trim();
    const shown = query ? entries.filter((e) => score(query, e) > 0) : entries;
    const byCategory = new Map();
    for (const e of shown.sort((a, b) => a.category.localeCompare(b.category) || a.title.localeCompare(b.title))) {
      if (!byCategory.has(e.category)) byCategory.set(e.category, []);
      byCategory.get(e.category).push(e);
    }
    tree.replaceChildren(...[...byCategory].map(([category, list]) => {
      const details = document.createElement("details");
      details.open = true;
      details.dataset.category = category;
      const summary = Object.assign(document.createElement("summary"), { textContent: category });
      details.append(summary, ...list.map(item));
      return details;
    }));
  }

  search.addEventListener("input", render);
  render();
}
