// Bypass, mute and collapse, as in ComfyUI: Ctrl+B / Ctrl+M / Alt+C and the node menu. A bypassed node
// (mode 4) passes its inputs through to its outputs of the same type; a muted one (mode 2, litegraph's
// "Never") is left out with everything only it feeds. The server applies both when it converts the
// workflow; here they are toggled and drawn (a tinted veil and a label over the node).
import { LGraphEventMode, LiteGraph } from "litegraph";

export const MUTED = LGraphEventMode.NEVER; // 2
export const BYPASSED = LGraphEventMode.BYPASS; // 4
const LOOK = {
  [MUTED]: { veil: "rgba(20, 20, 24, 0.55)", label: "muted", color: "#b0b3ba" },
  [BYPASSED]: { veil: "rgba(150, 40, 190, 0.35)", label: "bypassed", color: "#e7b5ff" },
};

function selectedNodes(canvas) {
  return Object.values(canvas.selected_nodes ?? {});
}

/** Set `mode` on the selected nodes, or back to normal when all of them already have it. */
export function toggleMode(canvas, mode) {
  const nodes = selectedNodes(canvas);
  if (!nodes.length) return false;
  const next = nodes.every((n) => n.mode === mode) ? LGraphEventMode.ALWAYS : mode;
  for (const n of nodes) n.mode = next;
  canvas.setDirty(true, true);
  return true;
}

export function toggleCollapse(canvas) {
  const nodes = selectedNodes(canvas);
  for (const n of nodes) n.collapse();
  return nodes.length > 0;
}

/** Draw each muted or bypassed node under a veil with its state written on it. */
export function drawModes(canvas) {
  const drawNode = canvas.drawNode.bind(canvas);
  canvas.drawNode = (node, ctx) => {
    drawNode(node, ctx);
    const look = LOOK[node.mode];
    if (!look) return;
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const [w, h] = node.flags.collapsed ? [node._collapsed_width ?? 80, 0] : node.size;
    ctx.save();
    ctx.fillStyle = look.veil;
    ctx.beginPath();
    ctx.roundRect(0, -title, w, h + title, 8);
    ctx.fill();
    ctx.fillStyle = look.color;
    ctx.font = "bold 11px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.fillText(look.label, w - 8, -title - 4);
    ctx.restore();
  };
}

/** Node menu: Bypass and Mute toggles in place of litegraph's "Mode" list (whose modes ComfyUI graphs
 * do not use), and Collapse with its shortcut. */
export function modeMenuEntries(canvas, node) {
  const on = (mode) => node.mode === mode;
  const act = (fn) => () => {
    if (!node.is_selected) canvas.selectNode(node);
    fn();
    canvas.graph.afterChange?.();
  };
  return [
    { content: on(BYPASSED) ? "Remove bypass (Ctrl+B)" : "Bypass (Ctrl+B)", callback: act(() => toggleMode(canvas, BYPASSED)) },
    { content: on(MUTED) ? "Unmute (Ctrl+M)" : "Mute (Ctrl+M)", callback: act(() => toggleMode(canvas, MUTED)) },
    { content: node.flags.collapsed ? "Expand (Alt+C)" : "Collapse (Alt+C)", callback: act(() => toggleCollapse(canvas)) },
  ];
}
