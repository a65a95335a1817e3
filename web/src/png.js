// Read the text chunks of a PNG (tEXt, iTXt, zTXt) where ComfyUI-style tools store
// `workflow` (UI JSON) and `prompt` (API JSON).

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function splitNul(bytes, start) {
  const end = bytes.indexOf(0, start);
  return end < 0 ? [bytes.length, bytes.length] : [end, end + 1];
}

export async function pngTextChunks(buffer) {
  const bytes = new Uint8Array(buffer);
  if (!SIGNATURE.every((b, i) => bytes[i] === b)) throw new Error("not a PNG file");
  const view = new DataView(buffer);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  const out = {};
  let pos = 8;
  while (pos + 8 <= bytes.length) {
    const length = view.getUint32(pos);
    const type = latin1.decode(bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, pos + 8 + length);
    pos += 12 + length;
    if (type === "IEND") break;
    if (type !== "tEXt" && type !== "iTXt" && type !== "zTXt") continue;
    const [kwEnd, next] = splitNul(data, 0);
    const key = latin1.decode(data.subarray(0, kwEnd));
    if (type === "tEXt") out[key] = latin1.decode(data.subarray(next));
    else if (type === "zTXt") out[key] = latin1.decode(await inflate(data.subarray(next + 1)));
    else {
      const compressed = data[next] === 1;
      const [, langNext] = splitNul(data, next + 2);
      const [, transNext] = splitNul(data, langNext);
      const text = data.subarray(transNext);
      out[key] = utf8.decode(compressed ? await inflate(text) : text);
    }
  }
  return out;
}
