// Node profiles (server/profile.py) on the canvas: after a run, a badge above each node that ran shows its
// time, or "cached"; hovering the badge tells the peak memory the node added and why it ran. The slowest
// node's badge is orange. The queue panel's history lists each prompt's breakdown (profileBreakdown).
import { LGraphBadge } from "litegraph";
import { runtime } from "./nodes.js";

const BADGE = "#1f3a2a";
const SLOWEST = "#8a4a12";
const openBreakdowns = new Set(); // prompt ids whose breakdown the user opened: kept open across refreshes

/** A badge that remembers where it was drawn (node coordinates), for hovering. */
class ProfileBadge extends LGraphBadge {
  draw(ctx, x, y) {
    super.draw(ctx, x, y);
    this.rect = [x + this.xOffset, y + this.yOffset, this.getWidth(ctx), this.height];
  }
}

export function formatMs(ms) {
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
}

function formatBytes(n) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}

/** The peak memory a node added: "+1.2 GB CUDA", or in words (`long`) for the badge's hover text. */
function memoryText(entry, long = false) {
  if (entry.cached) return "";
  if (entry.peak_bytes == null) return long ? "not measured (under 0.1 ms)" : "–";
  const kind = entry.memory === "cuda" ? ["CUDA", "CUDA allocated"] : ["RSS", "resident set"];
  return `+${formatBytes(entry.peak_bytes)} ${kind[long ? 1 : 0]}`;
}

/** The hover text of a node's badge. */
export function describeProfile(entry) {
  if (entry.cached) return "served from the cache";
  return `${formatMs(entry.ms)} · peak memory ${memoryText(entry, true)} · ran because: ${entry.why}`;
}

function setProfile(node, entry) {
  const st = runtime(node);
  st.profile = entry;
  if (!st.profileBadge) {
    const badge = new ProfileBadge({ text: "", bgColor: BADGE });
    st.profileBadge = badge;
    node.badges.push(() => badge);
  }
  st.profileBadge.text = !entry ? "" : entry.cached ? "cached" : formatMs(entry.ms);
  st.profileBadge.bgColor = BADGE;
}

function badgeAt(graph, [x, y]) {
  return graph._nodes.find((n) => {
    const st = n.lg;
    const r = st?.profile && st.profileBadge?.rect;
    if (!r) return false;
    const [left, top] = [n.pos[0] + r[0], n.pos[1] + r[1]];
    return x >= left && x <= left + r[2] && y >= top && y <= top + r[3];
  });
}

/** Show each finished prompt's profile on the nodes of the tab it was queued from. `nodeOf(promptId, id)`
 * is that tab's node, or null when the prompt belongs to another tab or client. */
export function showProfiles({ api, graph, canvas, nodeOf }) {
  api.addEventListener("execution_success", ({ detail }) => {
    const { prompt_id: promptId, profile } = detail ?? {};
    const shown = Object.entries(profile ?? {}).map(([id, e]) => [nodeOf(promptId, id), e]).filter(([n]) => n);
    if (!shown.length) return;
    for (const n of graph._nodes) if (n.lg?.profile) setProfile(n, null);
    for (const [n, entry] of shown) setProfile(n, entry);
    const ran = shown.filter(([, e]) => !e.cached);
    if (ran.length > 1) ran.reduce((a, b) => (b[1].ms > a[1].ms ? b : a))[0].lg.profileBadge.bgColor = SLOWEST;
    canvas.setDirty(true, true);
  });

  const tip = Object.assign(document.createElement("div"), { id: "profile-tip", hidden: true });
  canvas.canvas.parentElement.append(tip);
  canvas.canvas.addEventListener("pointermove", (e) => {
    const node = badgeAt(graph, canvas.convertEventToCanvasOffset(e));
    tip.hidden = !node;
    if (!node) return;
    tip.textContent = `${node.title} #${node.id}: ${describeProfile(node.lg.profile)}`;
    const box = canvas.canvas.getBoundingClientRect();
    Object.assign(tip.style, { left: `${e.clientX - box.left + 14}px`, top: `${e.clientY - box.top + 14}px` });
  });
  canvas.canvas.addEventListener("pointerleave", () => { tip.hidden = true; });
}

/** A history entry's profile as a collapsible table, slowest first, then the cached nodes. */
export function profileBreakdown(promptId, profile) {
  const entries = Object.entries(profile);
  const ran = entries.filter(([, e]) => !e.cached).sort(([, a], [, b]) => b.ms - a.ms);
  const total = ran.reduce((sum, [, e]) => sum + e.ms, 0);
  const details = Object.assign(document.createElement("details"), { className: "profile" });
  details.open = openBreakdowns.has(promptId);
  details.ontoggle = () => (details.open ? openBreakdowns.add(promptId) : openBreakdowns.delete(promptId));
  details.append(Object.assign(document.createElement("summary"), {
    textContent: `${ran.length} ran in ${formatMs(total)}, ${entries.length - ran.length} cached`,
  }));
  const table = document.createElement("table");
  for (const [id, e] of [...ran, ...entries.filter(([, x]) => x.cached)]) {
    const row = table.insertRow();
    row.title = e.cached ? "served from the cache" : `ran because: ${e.why}`;
    for (const text of [`#${id} ${e.class_type}`, e.cached ? "cached" : formatMs(e.ms), memoryText(e)]) {
      row.insertCell().textContent = text;
    }
  }
  details.append(table);
  return details;
}
