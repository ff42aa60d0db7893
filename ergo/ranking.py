"""How candidate replies are ranked, and how well a ranking picks true replies (recall@k of 10).

The generator's score of a reply is log p(reply | context) over a length penalty minus `mmi` times the
reply's mean log p per word given an empty context (the MMI-antiLM score, ergo/chatbot.py). With a
reply selector in the bundle (ergo/selector.py), the retrieve and hybrid modes rank by

    (1 - w) * generator score  +  w * selector score

where w is chosen on the validation split, when the selector is trained, as the one whose ranking puts
the true reply first among 10 most often; it is recorded in the bundle's ranking.json, with the recall
of every w tried. A bundle without that file ranks by the selector alone (w = 1).

Recall@k of 10: for each of n pairs, the true reply against 9 replies of other pairs of the same split
(none equal to it), the benchmark of the Ubuntu Dialogue Corpus (Lowe et al. 2015).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ErgoError
from .files import atomic_write_text

RANKING_FILE = "ranking.json"
CANDIDATES = 10
RECALL_AT = (1, 2, 5)
WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # the selector's weights tried
SELECTOR_ONLY = 1.0


def recall_rows(replies: Sequence, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(pool, rows): n random pairs of a split (their indices), and for each, 10 indices into the pool:
    itself first, then 9 others whose reply differs from its own."""
    pool = rng.choice(len(replies), size=min(n, len(replies)), replace=False)
    chosen = [tuple(int(w) for w in replies[i]) for i in pool]
    if len(set(chosen)) < CANDIDATES:
        raise ErgoError(f"recall@k needs {CANDIDATES} different replies in the split; it has fewer")
    rows = []
    for a in range(len(pool)):
        others = [b for b in rng.permutation(len(pool)) if chosen[b] != chosen[a]][:CANDIDATES - 1]
        rows.append([a] + others)
    return pool, np.array(rows)


def recall(scores: np.ndarray) -> dict:
    """Recall@1/2/5 from scores [n, 10] whose first column is the true reply's (ties count against it)."""
    beaten_by = (scores[:, 1:] >= scores[:, :1]).sum(axis=1)
    return {f"R@{k}": float(np.mean(beaten_by < k)) for k in RECALL_AT}


def combine(generator, selector, weight: float):
    """The ranking score of candidates from their generator and selector scores (numbers or arrays)."""
    return (1.0 - weight) * np.asarray(generator) + weight * np.asarray(selector)


def choose_weight(generator: np.ndarray, selector: np.ndarray) -> tuple[float, dict]:
    """The selector weight whose combined ranking has the best recall@1 (then @2, @5; then the larger
    weight, which needs no generator), and the recall of every weight tried."""
    tried = {w: recall(combine(generator, selector, w)) for w in WEIGHTS}
    best = max(tried, key=lambda w: (*tried[w].values(), w))
    return best, tried


def save(bundle_dir: Path, weight: float, tried: dict, pairs: int, mmi: float, length_penalty: float) -> dict:
    ranking = {"selector_weight": weight, "chosen_on": "valid", "pairs": pairs, "mmi": mmi,
               "length_penalty": length_penalty,
               "recall_by_weight": {f"{w:g}": r for w, r in tried.items()}}
    atomic_write_text(Path(bundle_dir) / RANKING_FILE, json.dumps(ranking, indent=2))
    return ranking


def selector_weight(bundle_dir: Path) -> float:
    """The bundle's chosen weight (SELECTOR_ONLY when it has none recorded)."""
    path = Path(bundle_dir) / RANKING_FILE
    if not path.is_file():
        return SELECTOR_ONLY
    try:
        weight = float(json.loads(path.read_text(encoding="utf-8"))["selector_weight"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ErgoError(f"{path}: damaged ranking file ({e}); choose it again with `python main.py --train-selector`") from None
    if not 0.0 <= weight <= 1.0:
        raise ErgoError(f"{path}: selector_weight must be from 0 to 1, not {weight}")
    return weight
