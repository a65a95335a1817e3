// The canvas's right-click menus, adjusted: bypass, mute and collapse on every node, and no
// "Convert to Subgraph" — litegraph's conversion needs a subgraph node type this canvas does not
// register yet, so it deleted the selection and failed. It stays hidden until it works.
import { modeMenuEntries } from "./modes.js";

const HIDDEN = [/^Convert to Subgraph/, /^Mode$/, /^Collapse$/, /^Expand$/];

function visible(options) {
  const kept = options.filter((o) => !o || !HIDDEN.some((re) => re.test(o.content ?? "")));
  return kept.filter((o, i) => o || (i > 0 && kept[i - 1])); // no doubled separators
}

export function adjustMenus(canvas) {
  const nodeMenu = canvas.getNodeMenuOptions.bind(canvas);
  canvas.getNodeMenuOptions = (node) => [...modeMenuEntries(canvas, node), null, ...visible(nodeMenu(node))];
  const canvasMenu = canvas.getCanvasMenuOptions.bind(canvas);
  canvas.getCanvasMenuOptions = () => visible(canvasMenu());
}
