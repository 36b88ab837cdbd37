"""Expert specialisation: which experts each class of tokens goes to, per MoE layer.

Token classes come from the token's text when the tokenizer is known: letters, digits, spaces,
punctuation, newlines, other, by the first character that is not a space (a token holding a newline is
a newline; one of spaces only is a space). For a byte tokenizer that is the class of the byte itself;
bytes of multi-byte UTF-8 characters decode to U+FFFD alone and count as other. Without a tokenizer
the classes are token ids: the most frequent ids of the trace, one class each, and the rest.

The matrix per layer is [n_classes, n_experts]: the share of the class's (token, expert) assignments
that go to each expert (rows sum to 1; 0 for a class absent from the trace). Unweighted by gates: it
says where the tokens are sent, as the load statistics do.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moe_lab.traces.trace import Trace

TEXT_CLASSES = ("letters", "digits", "spaces", "punctuation", "newlines", "other")
LETTERS, DIGITS, SPACES, PUNCTUATION, NEWLINES, OTHER = range(len(TEXT_CLASSES))
FREQUENT_IDS = 15  # classes by token id: this many most frequent ids, then one class for the rest
TOP_EXPERTS_SHOWN = 3  # per class in the printed table


@dataclass
class TokenClasses:
    names: list[str]
    index: np.ndarray  # [T] class of each traced token


def text_class(text: str) -> int:
    if "\n" in text or "\r" in text:
        return NEWLINES
    stripped = text.lstrip()
    if not stripped:
        return SPACES if text else OTHER
    first = stripped[0]
    if first.isalpha():
        return LETTERS
    if first.isdigit():
        return DIGITS
    if first in string.punctuation or unicodedata.category(first).startswith("P"):
        return PUNCTUATION
    return OTHER


def token_classes(token_ids: np.ndarray, decode: Callable[[list[int]], str] | None = None) -> TokenClasses:
    """Classes by each token's text (`decode`: the tokenizer's), else by token id (see the module doc)."""
    distinct, inverse = np.unique(token_ids, return_inverse=True)
    if decode is not None:
        # One decode per distinct id (at most the vocabulary), not per token.
        class_of_distinct = np.array([text_class(decode([int(i)])) for i in distinct], dtype=np.int64)
        return TokenClasses(list(TEXT_CLASSES), class_of_distinct[inverse.reshape(-1)])
    counts = np.bincount(inverse.reshape(-1), minlength=len(distinct))
    frequent = np.argsort(-counts, kind="stable")[:FREQUENT_IDS]  # positions in `distinct`, most frequent first
    class_of_distinct = np.full(len(distinct), len(frequent), dtype=np.int64)
    class_of_distinct[frequent] = np.arange(len(frequent))
    names = [f"id {distinct[j]}" for j in frequent] + (["other ids"] if len(distinct) > len(frequent) else [])
    return TokenClasses(names, class_of_distinct[inverse.reshape(-1)])


def class_expert_shares(trace: Trace, classes: TokenClasses) -> np.ndarray:
    """[L, n_classes, n_experts]: per layer, the share of each class's assignments that each expert takes."""
    L, T, K = trace.experts.shape
    C, E = len(classes.names), trace.meta.n_experts
    experts_LTK = trace.experts.astype(np.int64)
    layer_LTK = np.broadcast_to(np.arange(L)[:, None, None], (L, T, K))
    class_LTK = np.broadcast_to(classes.index[None, :, None], (L, T, K))
    assigned = experts_LTK >= 0  # not NO_EXPERT padding
    cell = ((layer_LTK * C + class_LTK) * E + experts_LTK)[assigned]
    counts_LCE = np.bincount(cell, minlength=L * C * E).reshape(L, C, E).astype(np.float64)
    return counts_LCE / np.maximum(counts_LCE.sum(axis=-1, keepdims=True), 1.0)


def specialisation_figure(shares_CE: np.ndarray, names: list[str], title: str):
    """The class x expert image, coloured relative to the uniform share like the load heatmap."""
    from moe_lab.callbacks.heatmap import expert_load_heatmap  # matplotlib: only when drawing

    shown, shares = present_classes(shares_CE, names)
    return expert_load_heatmap(shares, shown, title=title, ylabel="token class")


def present_classes(shares_CE: np.ndarray, names: list[str]) -> tuple[list[str], np.ndarray]:
    """The classes with a token in the trace and their rows: a class's all-0 row would read as starved experts."""
    present = shares_CE.sum(axis=-1) > 0
    return [name for name, keep in zip(names, present, strict=True) if keep], shares_CE[present]


def format_specialisation(trace: Trace, classes: TokenClasses, shares_LCE: np.ndarray) -> str:
    """Per layer and class present: its token count and the experts that take most of it."""
    E = trace.meta.n_experts
    tokens_C = np.bincount(classes.index, minlength=len(classes.names))
    lines = [
        f"expert specialisation by token class: the {TOP_EXPERTS_SHOWN} experts taking most of each class's "
        f"assignments, share (x uniform share 1/{E})"
    ]
    for row, layer in enumerate(trace.layers):
        lines.append(f"layer {layer}")
        for c, name in enumerate(classes.names):
            if not tokens_C[c]:
                continue
            top = np.argsort(-shares_LCE[row, c], kind="stable")[:TOP_EXPERTS_SHOWN]
            cells = "  ".join(f"e{e} {shares_LCE[row, c, e]:.2f} (x{shares_LCE[row, c, e] * E:.1f})" for e in top)
            lines.append(f"  {name:<12}{tokens_C[c]:>8,} tokens   {cells}")
    return "\n".join(lines)
