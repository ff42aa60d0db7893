"""The evaluation report: every metric, for every decoding mode, in report.json and report.md."""
import json
import shutil

import numpy as np
import pytest

from ergo.chatbot import SETTINGS
from ergo.errors import ErgoError
from ergo.evaluation import MODES, PROMPTS, RECALL_AT, distinct, evaluate, headline, ranking_scores
from ergo.ranking import recall
from ergo.retrieval import INDEX_FILE
from reply_bundle import reply_bundle


def test_distinct_n():
    replies = [["i", "like", "it"], ["i", "like", "cake"]]
    assert distinct(replies, 1) == pytest.approx(4 / 6)
    assert distinct(replies, 2) == pytest.approx(3 / 4)
    assert distinct([], 2) == 0.0


class Oracle:
    """A model that knows the answer (reply [i, 6] belongs to context [i, 7]) and finds every reply
    as likely as any other without a context."""

    selector = None

    def __init__(self, favour_true: bool):
        self.decoder = self
        self.sign = 1.0 if favour_true else -1.0

    def score(self, contexts, replies, ended=None):
        return np.array([self.sign * float(c[0] == r[0]) if c[0] else -1.0 for c, r in zip(contexts, replies)])


def test_recall_at_k_ranks_the_true_reply_among_ten():
    split = {"context": [np.array([i, 7], np.int32) for i in range(5, 45)],
             "reply": [np.array([i, 6], np.int32) for i in range(5, 45)]}
    right = {k: recall(s) for k, s in ranking_scores(Oracle(True), split, 30, np.random.default_rng(0)).items()}
    wrong = {k: recall(s) for k, s in ranking_scores(Oracle(False), split, 30, np.random.default_rng(0)).items()}
    assert all(v == 1.0 for r in right.values() for v in r.values())
    assert all(r == {"R@1": 0.0, "R@2": 0.0, "R@5": 0.0} for r in wrong.values()) and len(wrong) == 3


def test_report_has_every_metric_for_every_mode(tiny_bundle, tmp_path_factory, tmp_path):
    shared, data = reply_bundle(tiny_bundle, tmp_path_factory)
    bundle = tmp_path / "bundle"
    shutil.copytree(shared, bundle)
    (bundle / INDEX_FILE).unlink()  # evaluation builds the index a bundle lacks
    logged = []
    report = evaluate(bundle, data.path, "test", rank_pairs=40, generate_pairs=6, prompts=PROMPTS[:3],
                      log=logged.append)
    assert (bundle / INDEX_FILE).is_file() and any("retrieval index" in line for line in logged)
    assert report == json.loads((bundle / "report.json").read_text())
    assert 1 < report["perplexity"] < 400
    for scoring in report["recall"].values():
        values = [scoring[f"R@{k}"] for k in RECALL_AT]
        assert values == sorted(values) and all(0 <= v <= 1 for v in values)
    assert set(report["generation"]) == {"reference", *MODES}
    for name, g in report["generation"].items():
        assert 0 < g["distinct_1"] <= 1 and 0 <= g["distinct_2"] <= 1
        assert 0 <= g["generic_rate"] <= 1 and g["avg_length"] > 0
        if name != "reference":
            assert 0 <= g["bleu"] <= 1 and g["seconds_p50"] > 0
    assert report["default"] == SETTINGS["mode"][1] and len(report["generic_replies"]) == 10
    assert report["default_ranking"] == "MMI: per word - 1 anti-LM"  # no selector: retrieve ranks by MMI
    assert list(report["samples"]) == list(PROMPTS[:3])
    assert all(set(by_mode) == set(MODES) and all(by_mode.values()) for by_mode in report["samples"].values())
    md = (bundle / "report.md").read_text()
    for needle in ("perplexity", "R@1", "distinct-2", "BLEU", "generic rate", "avg length", "(default)",
                   PROMPTS[0], "beam+mmi"):
        assert needle in md
    assert "recall@1/2/5" in headline(report) and "(default)" in headline(report)


def test_evaluation_refuses_data_of_another_vocabulary(tiny_bundle, tmp_path_factory, tmp_path):
    from ergo import corpora
    from ergo.config import PRESETS, override
    from ergo.dataset import preprocess
    from fixtures import synthetic_conversations, write_text_corpus
    bundle, _ = reply_bundle(tiny_bundle, tmp_path_factory)
    corpus = corpora.resolve(str(write_text_corpus(tmp_path / "other.txt", synthetic_conversations(40, seed=5))))
    other, _ = preprocess(corpus, override(PRESETS["tiny"].data, max_vocab=60), tmp_path / "data", progress=False)
    with pytest.raises(ErgoError, match="vocabularies differ"):
        evaluate(bundle, other.path, log=lambda *_: None)
