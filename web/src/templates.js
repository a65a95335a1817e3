// The templates browser: the workflows this server ships, from /templates/index.json (the file the
// official ComfyUI frontend reads too), grouped by model family, each with a thumbnail of its graph.
// Choosing one opens it in a new tab.

/** Show the browser; `open(name, workflow)` opens the chosen template. */
export async function showTemplates(api, open, toast) {
  let index;
  try {
    index = (await api.templates()).filter((c) => c.category === "latentgraph"); // not the template package's
  } catch (err) {
    return void toast(`No templates: ${err.message}`, "error");
  }
  const backdrop = Object.assign(document.createElement("div"), { className: "modal-backdrop", id: "templates" });
  const box = Object.assign(document.createElement("div"), { className: "modal wide" });
  box.setAttribute("role", "dialog");
  const close = () => { backdrop.remove(); document.removeEventListener("keydown", onKey, true); };
  const onKey = (e) => { if (e.key === "Escape") { e.stopPropagation(); close(); } };
  document.addEventListener("keydown", onKey, true);
  backdrop.onpointerdown = (e) => { if (e.target === backdrop) close(); };
  box.append(Object.assign(document.createElement("h2"), { textContent: "Templates" }));
  for (const family of index) {
    const section = Object.assign(document.createElement("section"), { className: "template-family" });
    section.dataset.family = family.title;
    section.append(Object.assign(document.createElement("h3"), { textContent: family.title }));
    const grid = Object.assign(document.createElement("div"), { className: "template-grid" });
    for (const t of family.templates) {
      const card = Object.assign(document.createElement("button"), { className: "template-card", title: t.description });
      card.dataset.name = t.name;
      const img = Object.assign(document.createElement("img"), { src: `/templates/${t.name}-1.${t.mediaSubtype}`, alt: "", loading: "lazy" });
      card.append(img, Object.assign(document.createElement("span"), { className: "title", textContent: t.title }),
        Object.assign(document.createElement("span"), { className: "description", textContent: t.description }));
      card.onclick = async () => {
        close();
        try { open(t.name, await api.template(t.name)); } catch (err) { toast(`Could not open ${t.name}: ${err.message}`, "error"); }
      };
      grid.append(card);
    }
    section.append(grid);
    box.append(section);
  }
  backdrop.append(box);
  document.body.append(backdrop);
  box.querySelector(".template-card")?.focus();
}
