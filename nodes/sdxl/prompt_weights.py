"""Prompt weighting as ComfyUI users write it: ``(word:1.2)``, ``(word)`` = ×1.1, nesting multiplies.

``\\(`` and ``\\)`` are literal parentheses. A group whose text ends in ``:<number>`` takes that number
as its weight, otherwise 1.1. Unbalanced parentheses are kept as literal text rather than rejected, so
a stray ``)`` in a prompt never fails a run.
"""
from __future__ import annotations

DEFAULT_EMPHASIS = 1.1

_OPEN, _CLOSE = object(), object()


def _lex(text: str) -> list:
    """Characters and paren markers; escaped parens become plain characters."""
    items, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "()":
            items.append(text[i + 1])
            i += 2
            continue
        items.append(_OPEN if ch == "(" else _CLOSE if ch == ")" else ch)
        i += 1
    return items


def _match(items: list) -> list:
    """Turn unmatched paren markers back into literal characters."""
    stack, matched = [], set()
    for i, it in enumerate(items):
        if it is _OPEN:
            stack.append(i)
        elif it is _CLOSE and stack:
            matched.update((stack.pop(), i))
    return [it if (not isinstance(it, str) and i in matched) else ("(" if it is _OPEN else ")" if it is _CLOSE else it)
            for i, it in enumerate(items)]


def _tree(items: list) -> list:
    """Nested lists of strings: each list is one parenthesised group."""
    root: list = []
    stack = [root]
    for it in items:
        if it is _OPEN:
            group: list = []
            stack[-1].append(group)
            stack.append(group)
        elif it is _CLOSE:
            stack.pop()
        elif stack[-1] and isinstance(stack[-1][-1], str):
            stack[-1][-1] += it
        else:
            stack[-1].append(it)
    return root


def _group_weight(group: list) -> float:
    """Strip a trailing ``:number`` from the group's own text and return the weight it names."""
    if group and isinstance(group[-1], str) and ":" in group[-1]:
        head, _, tail = group[-1].rpartition(":")
        try:
            weight = float(tail)
        except ValueError:
            return DEFAULT_EMPHASIS
        if head:
            group[-1] = head
        else:
            group.pop()
        return weight
    return DEFAULT_EMPHASIS


def _flatten(nodes: list, weight: float, out: list[tuple[str, float]]) -> None:
    for node in nodes:
        if isinstance(node, str):
            if out and out[-1][1] == weight:
                out[-1] = (out[-1][0] + node, weight)
            else:
                out.append((node, weight))
        else:
            w = _group_weight(node)
            _flatten(node, weight * w, out)


def parse_weights(text: str) -> list[tuple[str, float]]:
    """``"a (red:1.5) cat"`` → ``[("a ", 1.0), ("red", 1.5), (" cat", 1.0)]``; adjacent equal weights merge."""
    out: list[tuple[str, float]] = []
    _flatten(_tree(_match(_lex(text))), 1.0, out)
    return [(t, w) for t, w in out if t]
