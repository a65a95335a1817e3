// HTTP + WebSocket client for the ComfyUI-compatible API served by `latentgraph serve`.
// Events dispatched: every JSON ws message by its `type` (detail = data), "preview" (detail = Blob),
// "online" / "offline" when the socket (re)connects or drops.

const RETRY_MAX_MS = 5000;

export class Api extends EventTarget {
  constructor() {
    super();
    this.clientId = sessionStorage.getItem("lg.clientId") || crypto.randomUUID().replaceAll("-", "");
    sessionStorage.setItem("lg.clientId", this.clientId);
    this.socket = null;
    this.retryMs = 250;
  }

  async request(path, { method = "GET", body, raw = false } = {}) {
    const init = { method, headers: {} };
    if (body instanceof FormData || raw) init.body = body;
    else if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const res = await fetch(path, init);
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = { error: { message: text } }; }
    if (!res.ok) {
      const err = new Error(data?.error?.message || `${method} ${path}: HTTP ${res.status}`);
      Object.assign(err, { status: res.status, data });
      throw err;
    }
    return data;
  }

  objectInfo() { return this.request("/object_info"); }
  queue() { return this.request("/queue"); }
  history(max = 30) { return this.request(`/history?max_items=${max}`); }
  deleteQueued(ids) { return this.request("/queue", { method: "POST", body: { delete: ids } }); }
  pauseQueue(pause) { return this.request("/queue", { method: "POST", body: { pause } }); }
  clearQueue() { return this.request("/queue", { method: "POST", body: { clear: true } }); }
  deleteHistory(ids) { return this.request("/history", { method: "POST", body: { delete: ids } }); }
  interrupt(promptId) {
    return this.request("/interrupt", { method: "POST", body: promptId ? { prompt_id: promptId } : {} });
  }

  /** Queue a UI workflow: the server converts it to the API format and validates it. `name` labels it in
   * queue panels (extra_data.workflow_name); `front` puts it at the head of the queue. */
  queuePrompt(workflow, { name, front = false } = {}) {
    const body = { prompt: workflow, client_id: this.clientId, extra_data: { extra_pnginfo: { workflow }, workflow_name: name } };
    if (front) body.front = true;
    return this.request("/prompt", { method: "POST", body });
  }

  async uploadImage(file) {
    const form = new FormData();
    form.append("image", file, file.name);
    return this.request("/upload/image", { method: "POST", body: form });
  }

  async workflowList() {
    const list = await this.request("/workflows");
    const names = Array.isArray(list) ? list : list?.workflows ?? [];
    return names.map((w) => (typeof w === "string" ? w : w.name)).filter(Boolean);
  }
  workflow(name) { return this.request(`/workflows/${encodeURIComponent(name)}`); }

  // ComfyUI's user-data API: saved workflows are `workflows/<name>.json` there, one path segment.
  userdataUrl(path) { return `/userdata/${encodeURIComponent(path)}`; }
  async listUserdata(dir) {
    try {
      return await this.request(`/userdata?${new URLSearchParams({ dir, recurse: "true", full_info: "true" })}`);
    } catch (err) {
      if (err.status === 404) return []; // nothing saved yet
      throw err;
    }
  }
  readUserdata(path) { return this.request(this.userdataUrl(path)); }
  writeUserdata(path, text, { overwrite = true } = {}) {
    return this.request(`${this.userdataUrl(path)}?overwrite=${overwrite}`, { method: "POST", body: text, raw: true });
  }
  moveUserdata(from, to, { overwrite = false } = {}) {
    return this.request(`${this.userdataUrl(from)}/move/${encodeURIComponent(to)}?overwrite=${overwrite}`, { method: "POST" });
  }
  deleteUserdata(path) { return this.request(this.userdataUrl(path), { method: "DELETE" }); }

  settings() { return this.request("/settings"); }
  setSetting(id, value) { return this.request(`/settings/${encodeURIComponent(id)}`, { method: "POST", body: value }); }

  templates() { return this.request("/templates/index.json"); }
  template(name) { return this.request(`/templates/${encodeURIComponent(name)}.json`); }
  models(folder) { return folder ? this.request(`/models/${encodeURIComponent(folder)}`) : this.request("/models"); }

  viewUrl({ filename, subfolder = "", type = "output" }) {
    const q = new URLSearchParams({ filename, subfolder, type });
    return `/view?${q}`;
  }

  connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/ws?clientId=${this.clientId}`);
    ws.binaryType = "arraybuffer";
    this.socket = ws;
    ws.onopen = () => {
      this.retryMs = 250;
      this.dispatchEvent(new CustomEvent("online"));
    };
    ws.onmessage = (ev) => this.#onMessage(ev.data);
    ws.onclose = () => {
      if (this.socket !== ws) return;
      this.dispatchEvent(new CustomEvent("offline"));
      // Reconnect with backoff so a restarted server is picked up without a page reload.
      setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
    };
  }

  #onMessage(data) {
    if (typeof data === "string") {
      let msg;
      try { msg = JSON.parse(data); } catch { return; }
      if (msg?.data?.sid) this.clientId = msg.data.sid;
      this.dispatchEvent(new CustomEvent(msg.type, { detail: msg.data }));
      return;
    }
    const view = new DataView(data);
    const event = view.getUint32(0);
    if (event === 1) {
      const mime = view.getUint32(4) === 2 ? "image/png" : "image/jpeg";
      this.dispatchEvent(new CustomEvent("preview", { detail: new Blob([data.slice(8)], { type: mime }) }));
    }
  }
}
