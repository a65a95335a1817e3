// Node search: a box at the pointer listing node types by fuzzy match, each with its category and its
// input → output types. Opened by a double-click on empty canvas, and by a link dropped on empty
// canvas, then filtered to the nodes that can take (or give) that link's type; the chosen node
// arrives at the drop point, linked.
import { LiteGraph } from "litegraph";
import { nodeFields, score } from "./fuzzy.js";

const MAX_RESULTS = 60;
const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);

function socketTypes(info) {
  const inputs = [];
  for (const group of ["required", "optional"]) {
    for (const [name, [type, opts = {}]] of Object.entries(info.input?.[group] ?? {})) {
      const kind = Array.isArray(type) ? "COMBO" : type;
      inputs.push({ name, type: kind, widget: WIDGET_TYPES.has(kind) && !opts.forceInput });
    }
  }
  return { inputs, outputs: info.output ?? [] };
}

function summary(types) {
  const links = types.inputs.filter((i) => !i.widget).map((i) => i.type);
  return `${links.join(", ") || "—"} → ${types.outputs.join(", ") || "—"}`;
}

export class NodeSearch {
  /** `objectInfo`: the server's node schemas; `addNode(type, pos)` makes a node at a canvas position
   * (its undo step is recorded after the current task, so the new link belongs to it). */
  constructor(objectInfo, canvas, addNode) {
    this.canvas = canvas;
    this.addNode = addNode;
    this.entries = Object.entries(objectInfo).map(([type, info]) => {
      const title = info.display_name || type;
      const types = socketTypes(info);
      return {
        type, title, category: info.category || "other", types, io: summary(types),
        fields: nodeFields(type, info),
      };
    });
    this.el = null;
  }

  /** Open at a pointer event (client coordinates). `link`: {node, slot, toInput} of a link being dropped. */
  open(event, link = null) {
    this.close();
    const pos = this.canvas.convertEventToCanvasOffset(event);
    const type = link ? String((link.toInput ? link.node.outputs : link.node.inputs)[link.slot].type) : null;
    const fits = !link ? () => true
      : link.toInput ? (e) => e.types.inputs.some((i) => LiteGraph.isValidConnection(type, i.type))
        : (e) => e.types.outputs.some((o) => LiteGraph.isValidConnection(o, type));
    const candidates = this.entries.filter(fits);

    const el = Object.assign(document.createElement("div"), { className: "node-search" });
    el.setAttribute("role", "dialog");
    const input = Object.assign(document.createElement("input"), {
      type: "search", placeholder: type ? `Search nodes that ${link.toInput ? "take" : "give"} ${type}…` : "Search nodes…",
      autocomplete: "off",
    });
    const list = Object.assign(document.createElement("ul"), { className: "results" });
    el.append(input, list);
    if (type) el.dataset.filter = `${link.toInput ? "input" : "output"}:${type}`;
    document.body.append(el);
    el.style.left = `${Math.min(event.clientX, innerWidth - el.offsetWidth - 8)}px`;
    el.style.top = `${Math.min(event.clientY, innerHeight - 360)}px`;

    let shown = [], active = 0;
    const render = () => {
      const q = input.value.trim();
      shown = q ? candidates.map((e) => [score(q, e), e]).filter(([s]) => s > 0).sort((a, b) => b[0] - a[0]).map(([, e]) => e)
        : [...candidates].sort((a, b) => a.category.localeCompare(b.category) || a.title.localeCompare(b.title));
      shown = shown.slice(0, MAX_RESULTS);
      active = 0;
      list.replaceChildren(...shown.map((e, i) => {
        const li = document.createElement("li");
        li.dataset.type = e.type;
        li.append(Object.assign(document.createElement("span"), { className: "title", textContent: e.title }),
          Object.assign(document.createElement("span"), { className: "category", textContent: e.category }),
          Object.assign(document.createElement("div"), { className: "io", textContent: e.io }));
        li.onpointerdown = (ev) => { ev.preventDefault(); pick(i); };
        return li;
      }));
      if (!shown.length) list.append(Object.assign(document.createElement("li"), { className: "none", textContent: "No matching node" }));
      highlight();
    };
    const highlight = () => {
      [...list.children].forEach((li, i) => li.classList.toggle("active", i === active));
      list.children[active]?.scrollIntoView({ block: "nearest" });
    };
    const pick = (i) => {
      const entry = shown[i];
      this.close();
      if (entry) this.#place(entry.type, pos, link, type);
    };
    input.addEventListener("input", render);
    input.addEventListener("keydown", (e) => {
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        active = Math.max(0, Math.min(shown.length - 1, active + (e.key === "ArrowDown" ? 1 : -1)));
        highlight();
      } else if (e.key === "Enter") pick(active);
      else if (e.key === "Escape") this.close();
      else return;
      e.preventDefault();
      e.stopPropagation();
    });
    this.outside = (e) => { if (!el.contains(e.target)) this.close(); };
    setTimeout(() => document.addEventListener("pointerdown", this.outside, true));
    this.el = el;
    render();
    input.focus();
  }

  close() {
    if (!this.el) return;
    document.removeEventListener("pointerdown", this.outside, true);
    this.el.remove();
    this.el = null;
    this.canvas.canvas.focus();
  }

  /** Add the chosen node; with a link, wire it to the slot the link came from. */
  #place(typeName, pos, link, type) {
    const node = this.addNode(typeName, pos);
    if (!node) return;
    if (link?.toInput) {
      // its first free input of the type, sockets before widget inputs
      const order = [...node.inputs.keys()].sort((a, b) => !!node.inputs[a].widget - !!node.inputs[b].widget);
      const slot = order.find((i) => node.inputs[i].link == null && LiteGraph.isValidConnection(type, node.inputs[i].type));
      if (slot !== undefined) link.node.connect(link.slot, node, slot);
    } else if (link) {
      node.pos = [pos[0] - node.size[0], pos[1]]; // the new node feeds the link's input: put it to the left
      const slot = node.outputs.findIndex((o) => LiteGraph.isValidConnection(o.type, type));
      if (slot >= 0) node.connect(slot, link.node, link.slot);
    }
  }
}

/** Open the search on a double-click on empty canvas (litegraph calls showSearchBox), and when a new
 * link is dropped on empty canvas. */
export function attachSearch(canvas, search) {
  canvas.showSearchBox = (event) => search.open(event);
  const lc = canvas.linkConnector;
  lc.events.addEventListener("dropped-on-canvas", (e) => {
    const first = lc.renderLinks[0];
    if (!first || lc.state.draggingExistingLinks || !first.node?.inputs) return;
    const toInput = lc.state.connectingTo === "input";
    search.open(e.detail, { node: first.node, slot: first.fromSlotIndex, toInput });
  });
}
