// Fuzzy matching for node search: every query word must be found, in any order, in one of an
// entry's fields, as a substring or as letters in order ("img" in "Image"). Matches at the start of
// a word ("Empty|Latent|Image") and in the title score highest.

/** Words of a name: "EmptyLatentImage", "VAEDecode", "empty latent_image" -> ["empty", "latent", "image"] … */
function words(text) {
  return String(text).replace(/([a-z0-9])([A-Z])/g, "$1 $2").replace(/([A-Z])([A-Z][a-z])/g, "$1 $2").toLowerCase().split(/[^a-z0-9]+/).filter(Boolean);
}

/** A field prepared for matching: its letters without separators and where each word starts there. */
export function field(text) {
  const parts = words(text);
  const starts = new Set();
  let at = 0;
  for (const p of parts) { starts.add(at); at += p.length; }
  return { text: parts.join(""), starts };
}

/** How well one query word matches a prepared field; 0 when it does not. */
function wordScore(word, f) {
  const at = f.text.indexOf(word);
  if (at >= 0) return 100 + (f.starts.has(at) ? 40 : 0) + (at === 0 ? 20 : 0) - f.text.length / 100;
  let pos = 0, gaps = 0, first = -1, starts = 0;
  for (const ch of word) {
    const k = f.text.indexOf(ch, pos);
    if (k < 0) return 0;
    if (first < 0) first = k;
    else gaps += k - pos;
    if (f.starts.has(k)) starts++;
    pos = k + 1;
  }
  if (!f.starts.has(first)) return 0; // letters scattered from mid-word are noise
  return Math.max(1, 60 + starts * 10 - gaps * 4);
}

/** The fields a node type is found by: its title, its type name, and (weakly) its category. */
export function nodeFields(type, info) {
  return [[field(info.display_name || type), 1], [field(type), 0.9], [field(info.category ?? ""), 0.4]];
}

/** Score of an entry {fields: [[prepared field, weight], ...]} for a query; 0 = no match. */
export function score(query, entry) {
  const q = words(query);
  let total = 0;
  for (const w of q) {
    let best = 0;
    for (const [f, weight] of entry.fields) best = Math.max(best, wordScore(w, f) * weight);
    if (!best) return 0;
    total += best;
  }
  return total;
}
