// The model library: the files the server lists under /models/<folder>, by folder. Dragging one onto
// the canvas (or clicking it) adds the folder's loader node with that file chosen.

export const MODEL_MIME = "application/x-latentgraph-model";

// ComfyUI's loader for each model folder and its file input.
const LOADERS = {
  checkpoints: ["CheckpointLoaderSimple", "ckpt_name"], vae: ["VAELoader", "vae_name"], loras: ["LoraLoader", "lora_name"],
  controlnet: ["ControlNetLoader", "control_net_name"], upscale_models: ["UpscaleModelLoader", "model_name"],
  clip: ["CLIPLoader", "clip_name"], text_encoders: ["CLIPLoader", "clip_name"], unet: ["UNETLoader", "unet_name"],
  diffusion_models: ["UNETLoader", "unet_name"], clip_vision: ["CLIPVisionLoader", "clip_name"],
  style_models: ["StyleModelLoader", "style_model_name"], gligen: ["GLIGENLoader", "gligen_name"],
};

/** [node type, input] that loads `file` from `folder`: the folder's ComfyUI loader when this server has it,
 * else the first node with a choice input that lists the file. */
export function loaderFor(objectInfo, folder, file) {
  const known = LOADERS[folder];
  if (known && objectInfo[known[0]]) return known;
  for (const [type, info] of Object.entries(objectInfo)) {
    for (const [name, [values]] of Object.entries(info.input?.required ?? {})) {
      if (Array.isArray(values) && values.includes(file)) return [type, name];
    }
  }
  return null;
}

export class ModelLibrary {
  /** `onPick(folder, file)`: a model was clicked. */
  constructor(api, objectInfo, tree, onPick) {
    Object.assign(this, { api, objectInfo, tree, onPick });
  }

  async refresh() {
    const folders = await this.api.models();
    const listed = await Promise.all(folders.map(async (folder) => [folder, await this.api.models(folder).catch(() => [])]));
    const sections = listed.filter(([folder, files]) => files.length && loaderFor(this.objectInfo, folder, files[0]));
    this.tree.replaceChildren(...sections.map(([folder, files]) => {
      const details = Object.assign(document.createElement("details"), { open: true });
      details.dataset.folder = folder;
      details.append(Object.assign(document.createElement("summary"), { textContent: `${folder.replaceAll("_", " ")} (${files.length})` }),
        ...files.map((file) => this.#item(folder, file)));
      return details;
    }));
    if (!sections.length) this.tree.textContent = "No model files found in the server's models folder.";
  }

  #item(folder, file) {
    const el = Object.assign(document.createElement("div"), { className: "lib-node", textContent: file, draggable: true });
    const loader = loaderFor(this.objectInfo, folder, file);
    el.title = `${folder}/${file} — drag onto the canvas for a ${loader?.[0] ?? "loader"} node`;
    el.dataset.model = `${folder}/${file}`;
    el.addEventListener("dragstart", (e) => {
      e.dataTransfer.setData(MODEL_MIME, JSON.stringify({ folder, file }));
      e.dataTransfer.effectAllowed = "copy";
    });
    el.addEventListener("click", () => this.onPick(folder, file));
    return el;
  }
}
