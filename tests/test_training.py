"""Training end to end (fairseq style) and the run folder's guarantees: resume, refusal, interruption."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from ergo import corpora
from ergo.batching import BatchIterator, make_batch
from ergo.bundle import Bundle
from ergo.config import PRESETS, override
from ergo.dataset import preprocess
from ergo.errors import ErgoError
from ergo.training import RunFolder, train
from fixtures import synthetic_conversations, write_text_corpus

TINY = PRESETS["tiny"]
QUIET = dict(progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    corpus = corpora.resolve(str(write_text_corpus(tmp / "talk.txt", synthetic_conversations(150))))
    prepared, _ = preprocess(corpus, TINY.data, tmp / "out", progress=False)
    return prepared


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """One run of two epochs, shared: tests that change it work on a copy."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(data, TINY.model, override(TINY.train, epochs=2), run, **QUIET)
    return run


def epochs(run: Path) -> list[dict]:
    return list(csv.DictReader(open(run / "metrics.csv")))


def test_preprocess_train_resume_end_to_end(data, trained, tmp_path):
    rows = epochs(trained)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["valid_ppl"]) < float(rows[0]["valid_ppl"])
    assert (trained / "curves.png").stat().st_size > 1000 and list((trained / "logs").iterdir())
    bundle = Bundle.load(trained / "best")
    assert bundle.card["epoch"] == 2 and bundle.card["valid_perplexity"] == pytest.approx(float(rows[1]["valid_ppl"]))
    assert len(bundle.vocab) == data.manifest["vocab_size"] and Path(bundle.card["data_dir"]) == data.path.resolve()
    assert (trained / "best" / "retrieval.npz").is_file()
    model = bundle.build_model()
    assert model.count_params() == bundle.card["parameters"]

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    state = train(data, TINY.model, override(TINY.train, epochs=3), run, resume=True, **QUIET)
    assert state.epoch == 3 and [int(r["epoch"]) for r in epochs(run)] == [1, 2, 3]


def test_existing_run_is_not_overwritten_and_other_settings_are_refused(data, trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    with pytest.raises(ErgoError, match="already holds this run: pass --resume"):
        train(data, TINY.model, TINY.train, run, **QUIET)
    with pytest.raises(ErgoError, match=r"holds a run with other settings \(model_config.hidden: 32 in the run, 48 now"):
        train(data, override(TINY.model, hidden=48), TINY.train, run, resume=True, **QUIET)
    with pytest.raises(ErgoError, match=r"other settings \(batch_size: 16 in the run, 8 now"):  # it would skip pairs
        train(data, TINY.model, override(TINY.train, batch_size=8), run, resume=True, **QUIET)
    logged = []  # --resume where nothing ran yet starts the run
    assert RunFolder(tmp_path / "empty", {"a": 1}).claim(True, logged.append) is False
    assert "nothing to resume" in logged[0] and (tmp_path / "empty" / "run.json").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ErgoError, match="not empty and holds no ErGo run"):
        train(data, TINY.model, TINY.train, tmp_path / "other", **QUIET)
    (run / "run.json").write_text("{half a json")
    with pytest.raises(ErgoError, match="run.json is damaged"):
        train(data, TINY.model, TINY.train, run, resume=True, **QUIET)
    assert (run / "best" / "card.json").is_file()  # nothing saved is lost


class StopAt(keras.callbacks.Callback):
    """Ctrl-C as a user would press it, or SIGTERM as `docker stop` sends it: in the middle of an epoch."""

    def __init__(self, step, sigterm: bool = False):
        super().__init__()
        self.step, self.seen, self.sigterm = step, 0, sigterm

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            if self.sigterm:
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt


def test_interrupted_run_resumes_from_its_latest_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    cfg = override(TINY.train, epochs=1)
    with pytest.raises(ErgoError, match=r"stopped by SIGTERM: saved the latest checkpoint .*epoch 1, batch 7\); continue with --resume"):
        train(data, TINY.model, cfg, run, callbacks=(StopAt(7, sigterm=True),), **QUIET)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # training's own handler is gone again
    saved = json.loads((run / "latest" / "state.json").read_text())
    assert saved["epoch"] == 0 and saved["position"] == 7 and saved["step"] == 7
    # the weights saved at the interruption are the ones the resumed run starts from
    from ergo.model import build_seq2seq
    probe = build_seq2seq(TINY.model, data.manifest["vocab_size"], data.embeddings())
    probe.load_weights(run / "latest" / "model.weights.h5")
    before = [w.copy() for w in probe.get_weights()]

    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append([np.array(w) for w in self.model.get_weights()])
            seen.append(int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)))
    state = train(data, TINY.model, cfg, run, resume=True, callbacks=(Spy(),), **QUIET)
    assert seen[1] == saved["step"]  # Adam's state came back with the weights
    for a, b in zip(before, seen[0]):
        np.testing.assert_array_equal(a, b)
    full_epoch = -(-len(data.split("train")["reply"]) // TINY.train.batch_size)
    assert state.epoch == 1 and state.step == full_epoch  # no batch lost, none repeated
    assert json.loads((run / "latest" / "state.json").read_text())["step"] == state.step


def test_a_run_stopped_after_its_last_batch_resumes_with_the_epochs_validation(data, tmp_path):
    run = tmp_path / "run"
    cfg = override(TINY.train, epochs=1)
    full_epoch = -(-len(data.split("train")["reply"]) // TINY.train.batch_size)
    with pytest.raises(ErgoError, match="interrupted"):  # as if during the validation that follows
        train(data, TINY.model, cfg, run, callbacks=(StopAt(full_epoch),), **QUIET)
    saved = json.loads((run / "latest" / "state.json").read_text())
    assert saved["epoch"] == 0 and saved["position"] == full_epoch and not (run / "best").exists()
    state = train(data, TINY.model, cfg, run, resume=True, **QUIET)
    assert state.epoch == 1 and state.step == full_epoch
    [row] = epochs(run)
    assert 1 < float(row["train_ppl"]) < float("inf")  # the epoch's loss, kept in the state across the stop
    assert Bundle.load(run / "best").card["epoch"] == 1 and (run / "best" / "retrieval.npz").is_file()


def test_a_run_that_stopped_before_its_first_checkpoint_starts_again(data, tmp_path):
    run = tmp_path / "run"
    cfg = override(TINY.train, epochs=1)
    with pytest.raises(ErgoError, match="interrupted"):
        train(data, TINY.model, cfg, run, callbacks=(StopAt(2),), **QUIET)
    shutil.rmtree(run / "latest")  # a crash (not a Ctrl-C) saves nothing
    logged = []  # a script that always retries with --resume gets going
    assert train(data, TINY.model, cfg, run, resume=True, progress=False, log=logged.append).epoch == 1
    assert any("stopped before its first checkpoint: starting the run again" in line for line in logged)


def test_latest_is_saved_within_epochs_and_a_damaged_one_falls_back_to_the_one_before(data, tmp_path):
    run = tmp_path / "run"
    positions = []

    class Watch(keras.callbacks.Callback):  # what a kill -9 at this batch would resume from
        def on_train_batch_end(self, batch, logs=None):
            if (run / "latest" / "state.json").is_file():
                positions.append(json.loads((run / "latest" / "state.json").read_text())["position"])

    full_epoch = -(-len(data.split("train")["reply"]) // TINY.train.batch_size)
    train(data, TINY.model, override(TINY.train, epochs=1, save_every=0.002), run, callbacks=(Watch(),), **QUIET)
    assert any(0 < p < full_epoch for p in positions)  # saved mid-epoch, with no validation
    assert int(list(csv.DictReader(open(run / "metrics.csv")))[-1]["step"]) == full_epoch  # one validation
    previous = json.loads((run / ".latest.previous" / "state.json").read_text())

    with open(run / "latest" / "model.weights.h5", "r+b") as f:  # a power loss's truncated file
        f.truncate(1000)
    logged = []
    state = train(data, TINY.model, override(TINY.train, epochs=2), run, resume=True, progress=False, log=logged.append)
    assert any("model.weights.h5 is damaged" in line and f"step {previous['step']:,}" in line for line in logged)
    assert state.epoch == 2 and state.step == previous["step"] + full_epoch * (2 - previous["epoch"]) - previous["position"]
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    assert steps == sorted(set(steps))  # the rows after the checkpoint it fell back to were dropped


def test_mirrored_strategy_on_two_cpu_devices(data, trained, tmp_path):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        from ergo.config import PRESETS, override
        from ergo.dataset import PreparedData
        from ergo.training import train
        state = train(PreparedData.open({str(data.path)!r}), PRESETS["tiny"].model,
                      override(PRESETS["tiny"].train, epochs=1), {str(tmp_path / "run")!r},
                      progress=False, strategy_scope=strategy.scope())
        print("replicas", strategy.num_replicas_in_sync, "ppl", state.best_valid_ppl)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "replicas 2 ppl" in r.stdout
    # the same training as on one device: each replica's loss is over its share, the logged one exact
    one_device = epochs(trained)[0]
    assert float(epochs(tmp_path / "run")[0]["valid_ppl"]) == pytest.approx(float(one_device["valid_ppl"]), rel=0.02)
    assert float(epochs(tmp_path / "run")[0]["train_ppl"]) == pytest.approx(float(one_device["train_ppl"]), rel=0.02)


def test_validation_measures_an_even_sample_of_a_big_split(data, monkeypatch):
    from ergo import training
    split = data.split("valid")
    assert training._validation_sample(split) is split  # a split of chitchat's size is measured whole
    monkeypatch.setattr(training, "VALID_PAIRS", 10)
    sample, again = training._validation_sample(split), training._validation_sample(split)
    assert len(sample["reply"]) == 10 and np.array_equal(sample["reply"].ids, again["reply"].ids)
    pairs = {(tuple(split["context"][i]), tuple(split["reply"][i])) for i in range(len(split["reply"]))}
    assert all((tuple(sample["context"][i]), tuple(sample["reply"][i])) in pairs for i in range(10))


def test_a_budget_validates_within_epochs_stops_when_spent_and_resumes(data, tmp_path):
    run, said = tmp_path / "run", []
    cfg = override(TINY.train, epochs=1000, patience=1000, minutes=0.3, validate_every=0.06, final_lr=0.1)
    state = train(data, TINY.model, cfg, run, progress=False, log=said.append)
    rows = epochs(run)
    assert any("0.3-minute budget is spent" in line for line in said)
    assert 0 < state.epoch < 1000 and not state.stopped_early
    assert any(float(r["epoch_share"]) < 1 for r in rows)  # validated inside an epoch too
    minutes = [float(r["minutes"]) for r in rows]
    assert minutes == sorted(minutes) and state.elapsed >= 0.3 * 60 * 0.5
    assert [int(r["step"]) for r in rows][-1] == state.step == state.validated_step  # the last steps are validated
    rates = [float(r["learning_rate"]) for r in rows]
    assert rates[-1] < rates[0] and rates[-1] >= 0.1 * TINY.train.learning_rate  # the schedule falls to final_lr
    assert Bundle.load(run / "best").card["valid_perplexity"] == pytest.approx(min(float(r["valid_ppl"]) for r in rows))
    assert (run / "curves.png").is_file()

    said.clear()
    same = train(data, TINY.model, cfg, run, resume=True, progress=False, log=said.append)
    assert same.step == state.step and any("has used its 0.3 minutes" in line for line in said)
    longer = train(data, TINY.model, override(cfg, minutes=0.45), run, resume=True, progress=False, log=said.append)
    assert longer.step > state.step and longer.elapsed > state.elapsed
    resumed = epochs(run)[len(rows):]
    assert resumed and int(resumed[0]["step"]) > state.step and float(resumed[0]["minutes"]) > minutes[-1]


@pytest.mark.parametrize("model_changes,train_changes", [  # the defaults train in the `trained` fixture
    ({"sampled_softmax": 40, "attention": "additive", "bidirectional_encoder": True}, {}),
    ({"attention": "general", "freeze_embeddings": True, "share_embeddings": False}, {}),
    # mixed precision on a CPU trains in float32, and says so
    ({}, {"label_smoothing": 0.1, "lr_decay": 0.5, "mixed_precision": True}),
])
def test_every_training_option_trains(data, tmp_path, model_changes, train_changes):
    cfg = override(TINY.train, epochs=2, patience=2, **train_changes)
    train(data, override(TINY.model, **model_changes), cfg, tmp_path / "run", **QUIET)
    rows = epochs(tmp_path / "run")
    assert float(rows[-1]["valid_ppl"]) < float(rows[0]["valid_ppl"])
    assert float(rows[-1]["train_ppl"]) < float(rows[0]["train_ppl"])


@pytest.mark.parametrize("tf_config", ["{not json", '{"cluster": {"worker": ["127.0.0.1:1"]}}', "[]"])
def test_a_malformed_tf_config_is_one_clear_error(data, tmp_path, monkeypatch, tf_config):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ErgoError, match="TF_CONFIG must be JSON naming the cluster and this task"):
        train(data, TINY.model, TINY.train, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


def _free_ports(n: int) -> list[int]:
    import socket
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_one_run_each_on_its_slice_of_every_batch_and_resume_together(data, trained, tmp_path):
    """MultiWorkerMirroredStrategy across two processes on localhost, set up by TF_CONFIG as on a cluster:
    one epoch, then a resume for a second, the other worker's own latest/ gone (it resumes from the chief's)."""
    script = textwrap.dedent(f"""
        import shutil
        import tensorflow as tf
        from ergo.batching import BatchIterator, as_keras_data
        from ergo.cluster import Cluster
        from ergo.config import PRESETS, override
        from ergo.dataset import PreparedData
        from ergo.training import _EpochBatches, train
        strategy = tf.distribute.MultiWorkerMirroredStrategy()  # what train() makes of TF_CONFIG, kept here
        with strategy.scope():
            cluster = Cluster.current()
        data, run, tiny = PreparedData.open({str(data.path)!r}), {str(tmp_path / "run")!r}, PRESETS["tiny"]
        first = train(data, tiny.model, override(tiny.train, epochs=1), run, progress=False,
                      strategy_scope=strategy.scope())
        print("first", first.step, first.best_valid_ppl)
        cluster.agree([0])  # a barrier: the chief's latest/ is written
        if not cluster.chief:
            shutil.rmtree(run + ".worker-1/latest")
        state = train(data, tiny.model, override(tiny.train, epochs=2), run, progress=False, resume=True,
                      strategy_scope=strategy.scope())
        batches = BatchIterator(data.split("train"), tiny.train.batch_size, seed=data.data_config.seed)
        first = next(iter(cluster.strategy.experimental_distribute_dataset(as_keras_data(_EpochBatches(batches)))))
        rows = cluster.strategy.experimental_local_results(first[0][0])[0].numpy()
        print("worker", cluster.index, "of", cluster.workers, "step", state.step, "ppl", state.best_valid_ppl,
              "rows", len(rows), "sum", int(rows.sum()))
    """)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = [subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
             "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
        for i in range(2)]
    try:
        outs = [w.communicate(timeout=300) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, (out, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]
    lines = [out.strip().splitlines() for out, _ in outs]
    firsts, said = [next(l for l in w if l.startswith("first")).split() for w in lines], [w[-1].split() for w in lines]
    assert [s[1] for s in said] == ["0", "1"] and {s[3] for s in said} == {"2"}
    # one machine's steps, and the same weights on both: the same validation perplexity, which is one device's
    one_device = epochs(trained)
    assert firsts[0][1] == firsts[1][1] == one_device[0]["step"]
    assert float(firsts[0][2]) == float(firsts[1][2]) == pytest.approx(float(one_device[0]["valid_ppl"]), rel=0.02)
    assert said[0][5] == said[1][5] == one_device[1]["step"]  # the resume went on from the chief's step
    assert float(said[0][7]) == float(said[1][7]) == pytest.approx(float(one_device[1]["valid_ppl"]), rel=0.02)
    # each worker kept its own slice of the first batch: together the whole batch
    first = make_batch(data.split("train"), BatchIterator(data.split("train"), TINY.train.batch_size,
                                                          seed=data.data_config.seed).order[0])[0]
    slices = [int(s[9]) for s in said]
    assert sum(slices) == len(first) and min(slices) > 0
    assert int(said[0][11]) + int(said[1][11]) == int(first.sum())
    # the chief wrote the run; the other worker only its own records and latest/, beside it
    assert (tmp_path / "run" / "best" / "model.weights.h5").is_file()
    worker = tmp_path / "run.worker-1"
    assert (worker / "latest" / "state.json").is_file() and not (worker / "best").exists()
    assert json.loads((worker / "latest" / "state.json").read_text())["step"] == int(one_device[1]["step"])
