"""A token-sequence task generated offline, used by suites/tokens_transformer.toml as a user's
own dataset (``dataset = "token_task:keyword_majority"``: this module sits next to the suite
file, which puts it on ``sys.path``).

Each sample is a sequence of token ids with padding: id 0 pads, ids 1..4 are the four class
keywords, the rest are filler. The label is the keyword that occurs most often (it occurs 3-5
times, each other keyword at most twice), at random positions among filler tokens; sequences have
random lengths, so the ``attention_mask`` matters. A bag-of-tokens model can solve it; truncation
and token dropout remove keywords and make it harder, which is what the edge sets measure.
"""

from __future__ import annotations

import numpy as np

KEYWORDS = (1, 2, 3, 4)


def keyword_majority(
    n: int = 1200, length: int = 24, vocab: int = 32, min_length: int = 12, seed: int = 0
) -> dict[str, object]:
    """``{"X": {"input_ids", "attention_mask"}, "y", "class_names", "kind": "tokens"}``."""
    if not 1 <= min_length <= length or vocab <= len(KEYWORDS) + 1:
        raise ValueError(f"min_length = {min_length}, length = {length}, vocab = {vocab}")
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, length), dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    y = rng.integers(0, len(KEYWORDS), size=n)
    for i in range(n):
        size = int(rng.integers(max(min_length, 12), length + 1))
        row = rng.integers(len(KEYWORDS) + 1, vocab, size=size)
        counts = {k: int(rng.integers(0, 3)) for k in range(len(KEYWORDS))}
        counts[int(y[i])] = int(rng.integers(3, 6))
        picks = [KEYWORDS[k] for k, c in counts.items() for _ in range(c)]
        where = rng.choice(size, size=len(picks), replace=False)
        row[where] = picks
        ids[i, :size] = row
        mask[i, :size] = 1
    return {
        "X": {"input_ids": ids, "attention_mask": mask},
        "y": y,
        "class_names": [f"kw{k}" for k in KEYWORDS],
        "kind": "tokens",
    }
