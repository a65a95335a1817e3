"""The largest requests the server accepts, in one place; README.md ("Bounds") lists each with the error past it.

Each bound sits well above what an honest client sends (a large ComfyUI workflow has a few hundred nodes and is a
few MB; a 4x upscale of a 2048² image is 8192²) and well below what would stall the event loop or exhaust memory.
"""
from __future__ import annotations

MAX_BODY_BYTES = 32 * 1024 * 1024       # a JSON (or PNG) request body: 413 request_too_large
MAX_UPLOAD_BYTES = 100 * 1024 * 1024    # an uploaded file (--max-upload-mb): 413 upload_too_large
MAX_IMAGE_PIXELS = 8192 * 8192          # an uploaded or re-encoded image: 413 image_too_large
MAX_GRAPH_NODES = 10_000                # nodes in a prompt, after subgraphs are expanded: 413 prompt_too_large
MAX_GRAPH_LINKS = 100_000               # links in a UI workflow: 413 prompt_too_large
MAX_JSON_DEPTH = 100                    # nesting of any JSON body or websocket message: 400 invalid_json
MAX_QUEUE_IDS = 10_000                  # prompt ids in one /queue or /history delete or requeue: 413 too_many_ids
MAX_PROMPT_ID_CHARS = 256               # a client-chosen prompt_id: 400 invalid_prompt
MAX_PROMPT_NUMBER = 2 ** 53             # |number| of a prompt, so it stays exact as a float: 400 invalid_prompt
READ_TIMEOUT = 20.0                     # seconds a client may stay silent mid-request (headers or body)


class TooLarge(ValueError):
    """A request past one of these bounds; the message names the bound."""


def too_deep(value, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether parsed JSON nests arrays and objects deeper than `limit` (a walk level by level: the value may be
    deep, and JSON holds exactly dicts and lists)."""
    level = [value] if type(value) in (dict, list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below = []
        for container in level:
            below += [v for v in (container.values() if type(container) is dict else container)
                      if type(v) is dict or type(v) is list]
        level = below
    return False
