// Side panels: the queue (running, pending, history — each with its workflow's name, run time, a
// thumbnail and its nodes' profile; cancel and delete), the gallery of output images (click for full
// size), and toasts.
import { profileBreakdown } from "./profile.js";

export function toast(message, kind = "info", ms = 6000) {
  const el = Object.assign(document.createElement("div"), { className: `toast ${kind}`, textContent: message });
  document.getElementById("toasts").append(el);
  setTimeout(() => el.remove(), ms);
  return el;
}

/** Switch the panels of one side bar: each `.side-tabs` button shows the panel its data-panel names. */
export function tabbedPanels(nav, onShow = () => {}) {
  const show = (id) => {
    for (const b of nav.querySelectorAll("button")) {
      b.classList.toggle("active", b.dataset.panel === id);
      document.getElementById(b.dataset.panel).hidden = b.dataset.panel !== id;
    }
    onShow(id);
  };
  for (const b of nav.querySelectorAll("button")) b.onclick = () => show(b.dataset.panel);
  return show;
}

function li(label, { kind = "", thumb = null, buttons = [] } = {}) {
  const el = document.createElement("li");
  el.className = kind;
  if (thumb) el.append(Object.assign(document.createElement("img"), { src: thumb, alt: "" }));
  el.append(Object.assign(document.createElement("span"), { className: "label", textContent: label, title: label }));
  for (const [text, title, fn] of buttons) {
    const b = Object.assign(document.createElement("button"), { textContent: text, title });
    b.onclick = (e) => { e.stopPropagation(); fn(); };
    el.append(b);
  }
  return el;
}

export class Panels {
  constructor(api, { openWorkflow }) {
    this.api = api;
    this.openWorkflow = openWorkflow;
    this.galleryEl = document.getElementById("gallery");
    this.seen = new Set();
    this.refreshTimer = null;
    this.show = tabbedPanels(document.querySelector("#side .side-tabs"));
    this.paused = false;
    const pause = document.getElementById("pause-queue");
    pause.onclick = () => this.#act(() => api.pauseQueue(!this.paused));
    document.getElementById("clear-queue").onclick = () => this.#act(() => api.clearQueue());
    document.getElementById("interrupt").onclick = () => this.#act(() => api.interrupt());
    const lightbox = document.getElementById("lightbox");
    lightbox.onclick = () => { lightbox.hidden = true; };
  }

  async #act(fn) {
    try { await fn(); } catch (err) { toast(err.message, "error"); }
    this.refresh();
  }

  /** Coalesce the many status messages of a run into one refresh. */
  refresh() {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => this.#refresh().catch(() => {}), 150);
  }

  async #refresh() {
    const [queue, history] = await Promise.all([this.api.queue(), this.api.history(30)]);
    const name = (q) => q[3]?.workflow_name ?? `#${q[0]}`;
    const item = (q, running) => {
      const id = q[1];
      const buttons = running
        ? [["Cancel", "Interrupt this prompt", () => this.#act(() => this.api.interrupt(id))]]
        : [["✕", "Remove from the queue", () => this.#act(() => this.api.deleteQueued([id]))]];
      const el = li(`${name(q)} · ${running ? "running" : "pending"}`, { kind: running ? "running" : "pending", buttons });
      el.dataset.promptId = id;
      return el;
    };
    this.paused = !!queue.paused;
    const pause = document.getElementById("pause-queue");
    pause.textContent = this.paused ? "Resume" : "Pause";
    pause.classList.toggle("primary", this.paused);
    document.getElementById("queue-running").replaceChildren(...queue.queue_running.map((q) => item(q, true)));
    document.getElementById("queue-pending").replaceChildren(...queue.queue_pending.map((q) => item(q, false)));
    const entries = Object.entries(history ?? {}).reverse();
    document.getElementById("queue-history").replaceChildren(...entries.map(([id, h]) => {
      const images = Object.values(h.outputs ?? {}).flatMap((o) => o.images ?? []);
      const status = outcome(h);
      const workflow = h.prompt?.[3]?.extra_pnginfo?.workflow;
      const buttons = [["✕", "Delete from history", () => this.#act(() => this.api.deleteHistory([id]))]];
      if (workflow) buttons.unshift(["Load", "Open this run's workflow in a new tab", () => this.openWorkflow(`${h.prompt[3].workflow_name ?? "run"} ${id.slice(0, 8)}`, workflow)]);
      for (const img of images) this.addImage(img);
      const { start, end } = h.timing ?? {};
      const time = start != null && end != null ? ` · ${((end - start) / 1000).toFixed(1)} s` : "";
      const el = li(`${name(h.prompt ?? [])} · ${status}${time}`, {
        kind: status, thumb: images.length ? this.api.viewUrl(images.at(-1)) : null, buttons,
      });
      el.dataset.promptId = id;
      el.title = `${id}\n${el.textContent}`;
      if (h.meta?.profile && Object.keys(h.meta.profile).length) el.append(profileBreakdown(id, h.meta.profile));
      return el;
    }));
  }

  /** Add an output image ({filename, subfolder, type}) to the gallery, newest first. */
  addImage(image) {
    const url = this.api.viewUrl(image);
    if (this.seen.has(url)) return;
    this.seen.add(url);
    const img = Object.assign(document.createElement("img"), { src: url, alt: image.filename, title: image.filename });
    img.dataset.filename = image.filename;
    img.onclick = () => {
      const lightbox = document.getElementById("lightbox");
      lightbox.querySelector("img").src = url;
      lightbox.hidden = false;
    };
    this.galleryEl.prepend(img);
  }
}

/** success, cancelled (interrupted by a user or a restart) or error. */
function outcome(entry) {
  const status = entry.status ?? {};
  if (status.status_str === "success") return "success";
  const interrupted = (status.messages ?? []).some(([type]) => type === "execution_interrupted");
  return interrupted ? "cancelled" : status.status_str ?? "?";
}
