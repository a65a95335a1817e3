"""CLIP byte-level BPE tokenizer, built offline from the vocabulary file open_clip ships.

The file is located through the import system without importing open_clip (whose package import pulls
in torchvision). Both SDXL text encoders share this vocabulary; they differ only in the pad id (CLIP-L
pads with EOT 49407, bigG with 0). Long prompts become several 77-token windows — never truncated.
"""
from __future__ import annotations

import gzip
import html
import importlib.util
from functools import lru_cache
from pathlib import Path

import regex

from nodes.sdxl.prompt_weights import parse_weights

try:  # open_clip and the original CLIP tokenizer fix mojibake with ftfy; follow them when it is there
    import ftfy
except ImportError:  # pragma: no cover - ftfy is a dependency of open_clip_torch
    ftfy = None

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = 49406, 49407
CONTEXT = 77
CONTENT = CONTEXT - 2  # tokens per window between SOT and EOT
PAD_CLIP_L, PAD_BIGG = EOT, 0

_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)

Window = list[tuple[int, float]]


def bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("CLIP tokenizer: the open_clip_torch package (which ships the BPE vocabulary) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / BPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"CLIP tokenizer: {path} is missing from the open_clip_torch install")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters (whitespace/control bytes moved above 255)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    chars = printable + [256 + n for n in range(len(extra))]
    return {b: chr(c) for b, c in zip(printable + extra, chars)}


def clean(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy, HTML unescape (twice), whitespace collapse, lower case."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


class ClipTokenizer:
    def __init__(self, path: Path | None = None):
        lines = gzip.open(path or bpe_path()).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
        self.byte_encoder = _bytes_to_unicode()
        chars = list(self.byte_encoder.values())
        vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self._cache: dict[str, list[int]] = {}
        assert self.encoder["<|startoftext|>"] == SOT and self.encoder["<|endoftext|>"] == EOT

    def _bpe(self, word: str) -> list[int]:
        """Merge the characters of one pre-token by rank until no known pair is left."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.encoder[p] for p in parts]
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Content ids only (no SOT/EOT, no padding)."""
        ids: list[int] = []
        for piece in _PATTERN.findall(clean(text)):
            ids += self._bpe("".join(self.byte_encoder[b] for b in piece.encode("utf-8")))
        return ids

    def tokenize_weighted(self, text: str, pad_id: int) -> list[Window]:
        """77-token windows of (id, weight): SOT + up to 75 content tokens + EOT + padding, one per 75 tokens."""
        content = [(i, w) for segment, w in parse_weights(text) for i in self.encode(segment)]
        chunks = [content[s:s + CONTENT] for s in range(0, len(content), CONTENT)] or [[]]
        return [window(chunk, pad_id) for chunk in chunks]


def window(content: Window, pad_id: int) -> Window:
    return [(SOT, 1.0), *content, (EOT, 1.0)] + [(pad_id, 1.0)] * (CONTENT - len(content))


@lru_cache(maxsize=1)
def shared_tokenizer() -> ClipTokenizer:
    """One tokenizer per process: building the 49k-entry vocabulary takes a moment."""
    return ClipTokenizer()
