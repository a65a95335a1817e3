// Side panels: the queue (running, pending, history with each run's profile; cancel and delete), the
// gallery of output images (click for full size), and toasts for hints and errors.
import { profileBreakdown } from "./profile.js";

export function toast(message, kind = "info", ms = 6000) {
  const el = Object.assign(document.createElement("div"), { className: `toast ${kind}`, textContent: message });
  document.getElementById("toasts").append(el);
  setTimeout(() => el.remove(), ms);
  return el;
}

function li(label, { error = false, thumb = null, buttons = [] } = {}) {
  const el = document.createElement("li");
  if (error) el.className = "error";
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
    for (const b of document.querySelectorAll(".side-tabs button")) {
      b.onclick = () => this.show(b.dataset.panel);
    }
    this.paused = false;
    const pause = document.getElementById("pause-queue");
    pause.onclick = () => this.#act(() => api.pauseQueue(!this.paused));
    document.getElementById("clear-queue").onclick = () => this.#act(() => api.clearQueue());
    document.getElementById("interrupt").onclick = () => this.#act(() => api.interrupt());
    const lightbox = document.getElementById("lightbox");
    lightbox.onclick = () => { lightbox.hidden = true; };
  }

  show(id) {
    for (const b of document.querySelectorAll(".side-tabs button")) b.classList.toggle("active", b.dataset.panel === id);
    for (const p of document.querySelectorAll("#side .panel")) p.hidden = p.id !== id;
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
    const item = (q, running) => {
      const id = q[1];
      const buttons = running
        ? [["Cancel", "Interrupt this prompt", () => this.#act(() => this.api.interrupt(id))]]
        : [["✕", "Remove from the queue", () => this.#act(() => this.api.deleteQueued([id]))]];
      return li(`#${q[0]} ${id.slice(0, 8)}`, { buttons });
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
      const status = h.status?.status_str ?? "?";
      const workflow = h.prompt?.[3]?.extra_pnginfo?.workflow;
      const buttons = [["✕", "Delete from history", () => this.#act(() => this.api.deleteHistory([id]))]];
      if (workflow) buttons.unshift(["Load", "Open this run's workflow in a new tab", () => this.openWorkflow(`run ${id.slice(0, 8)}`, workflow)]);
      for (const img of images) this.addImage(img);
      const el = li(`${status} · ${id.slice(0, 8)}`, {
        error: status === "error", thumb: images[0] ? this.api.viewUrl(images[0]) : null, buttons,
      });
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
