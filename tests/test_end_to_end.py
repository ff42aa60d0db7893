"""main.py end to end, in process (fairseq's test_binaries.py pattern): preprocess a corpus in a user's own
format, train the tiny preset briefly, then chat, evaluate and export through `main.main`, as a user would
run them one after another in one folder. Each call must also leave the process as it found it."""
import contextlib
import io
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path

import keras
import pytest

import main
from fixtures import synthetic_conversations, write_text_corpus

CONVERSATIONS = 60  # a test split of three conversations: the ten pairs or more evaluation needs
PNG = b"\x89PNG\r\n\x1a\n"
TENSORFLOW = keras.backend.backend() == "tensorflow"  # the device line, TensorBoard and SavedModel are its


def process_state() -> dict:
    """What a command run in process must not change for its caller."""
    fd2 = os.fstat(2)
    return {"cwd": os.getcwd(), "environ": dict(os.environ), "stdout": sys.stdout, "stderr": sys.stderr,
            "stdin": sys.stdin, "fd 2": (fd2.st_dev, fd2.st_ino),
            "signals": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)},
            "root logger": (logging.getLogger().level, list(logging.getLogger().handlers)),
            "gensim's log level": logging.getLogger("gensim").level,  # (a library may add a NullHandler on import)
            "dtype policy": keras.config.dtype_policy().name, "device line": main._device.line}


def open_files_under(folder: Path) -> list[str]:
    """The files under `folder` this process still has open (Linux: /proc/self/fd)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed since listed
            continue
        if target.startswith(str(folder.resolve()) + os.sep):
            found.append(target)
    return found


def call(*argv) -> int:
    """main.main(argv), checked for leaks into the process."""
    before = process_state()
    code = main.main(list(argv))
    after = process_state()
    env = {k for k in before["environ"].keys() | after["environ"].keys()
           if before["environ"].get(k) != after["environ"].get(k)}
    assert after == before, ({f"environ[{k}]": (before["environ"].get(k), after["environ"].get(k)) for k in env},
                             {k: (before[k], after[k]) for k in before if k != "environ" and before[k] != after[k]})
    return code


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's folder after `--preprocess` and a one-epoch `--train` of the tiny preset, run in it;
    returns (the folder, what each command printed)."""
    root = tmp_path_factory.mktemp("e2e")
    write_text_corpus(root / "talk.txt", synthetic_conversations(CONVERSATIONS))
    printed = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # the default data/ and checkpoints/ folders are relative to where the user runs main.py
        for name, argv in (("preprocess", ["--preprocess", "--corpus", "talk.txt", "--preset", "tiny", "--quiet"]),
                           ("train", ["--train", "--corpus", "talk.txt", "--preset", "tiny", "--epochs", "1",
                                      "--quiet"])):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = call(*argv)
            printed[name] = out.getvalue(), err.getvalue()
            assert code == 0, printed[name]
    return root, printed


@pytest.fixture
def in_project(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    return root


def test_preprocess_then_train_names_and_fills_the_run_folder(project):
    root, printed = project
    out, err = printed["preprocess"]
    assert f"data/talk-tiny/ written: {CONVERSATIONS} conversations" in out
    assert "warning: tiny corpus" in err and "Traceback" not in err
    assert (root / "data" / "talk-tiny" / "manifest.json").is_file()

    out, err = printed["train"]
    assert "data/talk-tiny/ up to date, reused" in out  # --train reuses what --preprocess wrote
    found = re.search(r"best model: checkpoints/talk-tiny/best/ \(validation perplexity ([\d.]+) at epoch 1\); "
                      r"curves in checkpoints/talk-tiny/curves.png, "
                      r"TensorBoard: tensorboard --logdir checkpoints/talk-tiny/logs", out)
    assert found, out
    assert err.count("device: ") == TENSORFLOW  # named once, where TensorFlow work begins
    assert "Traceback" not in err

    run = root / "checkpoints" / "talk-tiny"
    assert json.loads((run / "run.json").read_text())
    assert (run / "latest" / "state.json").is_file()
    best = run / "best"
    for name in ("config.json", "vocab.json", "model.weights.h5", "card.json", "card.md", "ranking.json",
                 "selector/config.json"):
        assert (best / name).is_file(), name
    card = json.loads((best / "card.json").read_text())
    assert card["epoch"] == 1 and card["valid_perplexity"] == pytest.approx(float(found.group(1)), abs=0.01)
    assert Path(card["data_dir"]) == (root / "data" / "talk-tiny").resolve()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("epoch") and "valid_ppl" in rows[0]
    assert len((run / "steps.csv").read_text().splitlines()) >= 2
    assert (run / "curves.png").read_bytes()[:8] == PNG
    assert list((run / "logs").rglob("events.out.tfevents.*")) or not TENSORFLOW
    assert not list(root.glob("**/.*.tmp"))  # nothing half-written left behind
    if Path("/proc/self/fd").is_dir():
        assert not open_files_under(run)  # the TensorBoard events file included: closed when training ends


def test_chat_answers_each_piped_line(in_project, monkeypatch, capsys):
    lines = ["hi!", "what do you like to eat?", "/reset", "", "where do you live?"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    # the run folder that --corpus and --preset name, as --train chose it
    assert call("--chat", "--corpus", "talk.txt", "--preset", "tiny", "--decoder", "greedy", "--quiet") == 0
    out, err = capsys.readouterr()
    replies = out.splitlines()
    assert len(replies) == 3 and all(r.strip() for r in replies), out  # one a message; commands and blanks none
    assert "(new conversation)" in err and "Traceback" not in err
    assert err.count("device: ") == TENSORFLOW


def test_evaluate_prints_its_metrics_and_writes_the_report(in_project, capsys):
    assert call("--evaluate", "--model-dir", "checkpoints/talk-tiny", "--quiet") == 0
    out, err = capsys.readouterr()
    best = in_project / "checkpoints" / "talk-tiny" / "best"
    report = json.loads((best / "report.json").read_text())
    first = out.splitlines()[0]
    found = re.match(r"test perplexity ([\d.]+); recall@1/2/5 of 10 ([\d.]+)/([\d.]+)/([\d.]+) by (\S+)", first)
    assert found, out
    assert float(found.group(1)) == pytest.approx(report["perplexity"], abs=0.01)
    r1, r2, r5 = (float(found.group(i)) for i in (2, 3, 4))
    assert 0 <= r1 <= r2 <= r5 <= 1
    assert re.search(r"distinct-2 [\d.]+ +BLEU [\d.]+ +generic [\d.]+% +length [\d.]+ +\(default\)", out), out
    assert "report: checkpoints/talk-tiny/best/report.md and report.json" in out
    assert (best / "report.md").read_text().startswith("# Evaluation of")
    assert "perplexity on" in err and "Traceback" not in err


@pytest.mark.skipif(not TENSORFLOW, reason="SavedModel is TensorFlow's")
def test_export_writes_a_saved_model_that_replies(in_project, capsys):
    import numpy as np
    import tensorflow as tf
    from ergo.chatbot import Chatbot

    assert call("--export", "--model-dir", "checkpoints/talk-tiny", "--quiet") == 0
    out, _ = capsys.readouterr()
    target = in_project / "checkpoints" / "talk-tiny" / "export" / "1"  # export/ beside the bundle, version 1
    assert "SavedModel written to checkpoints/talk-tiny/export/1/; serve it with: docker run" in out, out
    assert f"-v {target.parent.resolve()}:/models/ergo" in out
    best = in_project / "checkpoints" / "talk-tiny" / "best"
    assert (target / "assets.extra" / "vocab.json").read_text() == (best / "vocab.json").read_text()

    served = tf.saved_model.load(str(target))
    assert {"serving_default", "greedy", "beam"} <= set(served.signatures)
    bot = Chatbot.load(best)
    for history in (["hi!"], ["where do you live?"]):
        result = served.signatures["serving_default"](context_ids=tf.constant(bot.context(history), tf.int32))
        ids, log_prob = result["reply_ids"], result["log_prob"]
        assert ids.dtype == tf.int32 and ids.shape.rank == 1 and ids.shape[0] >= 1
        assert np.all((ids.numpy() >= 0) & (ids.numpy() < len(bot.vocab)))
        assert log_prob.dtype == tf.float32 and log_prob.shape.rank == 0 and float(log_prob) <= 0
        assert bot.vocab.decode(ids.numpy())  # words, not only specials


@pytest.mark.parametrize("action", ["--chat", "--evaluate", "--export"])
def test_a_missing_model_dir_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, action):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    assert call(action, "--model-dir", "nowhere", "--quiet") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("error: no trained model in nowhere/: train one with `python main.py --train`, "
                   "or pass --model-dir\n")  # alone: no device line, no traceback
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_corpus_that_does_not_exist_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert call("--train", "--corpus", "nope.txt", "--preset", "tiny", "--quiet") == 2
    _, err = capsys.readouterr()
    assert err.startswith("error: no such corpus file or folder: nope.txt") and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_liked_conversations_exported_then_fine_tune_the_bundle_into_a_new_run(in_project, capsys):
    """The live loop without a browser: conversations kept in the run folder's Redis (as --serve keeps them),
    exported while no server runs, then a fine-tune of the bundle on them, which chats."""
    from ergo.bundle import Bundle
    from web.redis_server import LocalRedis
    from web.store import ConversationStore, connect

    run = in_project / "checkpoints" / "talk-tiny"
    redis = LocalRedis(run / "web" / "redis")
    store = ConversationStore(connect(redis.start()), cap=100, ttl=3600)
    try:
        for k, turns in enumerate(synthetic_conversations(12, seed=5)):
            cid = f"conversation-{k:013d}"
            for i in range(0, len(turns) - 1, 2):
                store.append(cid, {"role": "user", "text": turns[i]}, {"role": "bot", "text": turns[i + 1]},
                             bundle="talk-tiny")
            store.vote(cid, 2, "up" if k < 10 else "down")
    finally:
        redis.stop()
    assert call("--export-conversations", "liked.jsonl", "--model-dir", "checkpoints/talk-tiny", "--quiet") == 0
    out, _ = capsys.readouterr()
    assert "10 conversation(s)" in out and "2 without a up-vote" in out, out
    lines = [json.loads(line) for line in (in_project / "liked.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and all(list(line) == ["turns"] and len(line["turns"]) >= 2 for line in lines)
    assert LocalRedis.running(run / "web" / "redis") is None  # the one it started to read them is stopped

    bundle = Bundle.load(run / "best")
    assert call("--train", "--corpus", "liked.jsonl", "--init-from", "checkpoints/talk-tiny", "--epochs", "1",
                "--quiet") == 0
    out, err = capsys.readouterr()
    tuned = in_project / "checkpoints" / "liked-from-talk-tiny"  # an ordinary run folder, named for both
    assert "best model: checkpoints/liked-from-talk-tiny/best/" in out and "Traceback" not in err
    assert json.loads((tuned / "run.json").read_text())["init_from"] == {"bundle": "talk-tiny",
                                                                          "version": bundle.version()}
    new = Bundle.load(tuned / "best")
    assert new.vocab.words == bundle.vocab.words and new.model_config == bundle.model_config
    stats = json.loads((in_project / "data" / "liked-from-talk-tiny" / "stats.json").read_text())
    assert stats["embedding"]["source"] == f"the embeddings of checkpoints/talk-tiny/best (version {bundle.version()})"
    assert (tuned / "best" / "selector" / "index.npz").read_bytes() == (run / "best" / "selector" / "index.npz").read_bytes()
    import numpy as np  # it started from the bundle's weights: a step away from them, far from a fresh start
    start, tuned_w = bundle.build_model().weights, new.build_model().weights
    moved = np.mean([np.mean(np.abs(a.numpy() - b.numpy())) for a, b in zip(start, tuned_w)])
    scale = np.mean([np.mean(np.abs(a.numpy())) for a in start])
    assert 0 < moved < 0.1 * scale

    assert call("--train", "--corpus", "liked.jsonl", "--init-from", "checkpoints/talk-tiny", "--hidden", "8",
                "--quiet") == 2
    _, err = capsys.readouterr()
    assert err == ("error: --hidden cannot change a bundle that --init-from fine-tunes: its vocabulary, data "
                   "settings and model shape are kept\n")


@pytest.mark.parametrize("argv, message", [
    (["--chat", "--model-dir", "a", "--model-dir", "b"], "only --serve takes several --model-dir"),
    (["--serve", "--model-dir", "checkpoints/talk-tiny", "--traffic", "1,1"],
     "--traffic gives 2 share(s) for 1 bundle(s)"),
    (["--serve", "--model-dir", "checkpoints/talk-tiny", "--model-dir", "checkpoints/talk-tiny/best"], "given twice"),
    (["--export-conversations", "out.jsonl", "--model-dir", "nowhere"], "nowhere/ holds no conversations"),
    (["--preprocess", "--init-from", "checkpoints/talk-tiny"], "--init-from goes with --train"),
])
def test_mistakes_with_bundles_side_by_side_and_the_live_loop_are_one_line(in_project, capsys, argv, message):
    assert call(*argv, "--quiet") == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (in_project / "out.jsonl").exists()


def test_train_selector_replaces_the_selector_in_best_and_in_the_run(in_project, capsys):
    best = in_project / "checkpoints" / "talk-tiny" / "best"
    trained_at = (best / "selector" / "config.json").stat().st_mtime_ns
    assert call("--train-selector", "--model-dir", "checkpoints/talk-tiny", "--preset", "tiny", "--quiet") == 0
    out, err = capsys.readouterr()
    assert "reply selector added to checkpoints/talk-tiny/best/" in out and "ranking: selector weight" in out, err
    assert (best / "selector" / "config.json").stat().st_mtime_ns != trained_at  # replaced, in best/ and the run
    assert (best.parent / "selector" / "config.json").stat().st_mtime_ns != trained_at
