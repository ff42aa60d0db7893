"""ErGo's one command. A thin layer over the ergo/ library (and web/ for --serve): parse, call, print.

A user's mistake (a wrong path, a bad corpus, a mismatched checkpoint) ends with one line on stderr
and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ergo.errors import ErgoError

UNBOUNDED_EPOCHS = 10_000
DEFAULT_CORPUS = "chitchat"
ACTIONS = ("download", "preprocess", "train", "train_selector", "evaluate", "export", "chat", "serve",
           "export_conversations")
TENSORFLOW_ACTIONS = ("train", "train_selector", "evaluate", "export", "chat")  # --serve: in each web worker


def build_parser() -> argparse.ArgumentParser:
    from ergo.choices import ATTENTION, DECODERS, MODES, RATED, SPLITS, described
    from ergo.config import DEFAULT_PRESET, PRESETS, SELECTOR_ENCODERS
    from ergo.corpora import NAMED, READERS
    from ergo.corpora.download import SOURCES

    p = argparse.ArgumentParser(
        prog="main.py", description="ErGo: train a seq2seq chatbot on dialogs and chat with it.",
        epilog="Corpus formats and examples: corpora/README.md")
    act = p.add_argument_group("what to do (one or more, run in this order)")
    act.add_argument("--download", metavar="NAME", choices=sorted(SOURCES),
                     help=f"fetch a corpus from its official address into corpora/NAME/ ({', '.join(sorted(SOURCES))})")
    act.add_argument("--preprocess", action="store_true",
                     help="corpus -> tokens -> vocabulary -> pickled id sequences + word2vec")
    act.add_argument("--train", action="store_true",
                     help="train the seq2seq model and its reply selector (preprocesses first when needed)")
    act.add_argument("--train-selector", action="store_true",
                     help="train a reply selector into an existing bundle (replacing its own), then choose its "
                          "weight in the ranking on the validation split")
    act.add_argument("--evaluate", action="store_true",
                     help="perplexity, recall@k, distinct-n, BLEU, sample replies -> report.md in the bundle")
    act.add_argument("--export", action="store_true", help="write a TensorFlow SavedModel for TF Serving")
    act.add_argument("--chat", action="store_true", help="chat in the terminal (or answer piped lines)")
    act.add_argument("--serve", action="store_true", help="serve the chat page at http://HOST:PORT/ (gunicorn)")
    act.add_argument("--export-conversations", type=Path, metavar="OUT",
                     help="write the web chat's stored conversations (by default those with an up-vote) to OUT as "
                          "a JSON-lines corpus, to train on (--train --corpus OUT --init-from BUNDLE)")

    data = p.add_argument_group("data")
    data.add_argument("--corpus",
                      help=f"a named corpus ({', '.join(NAMED)}) or a PATH to a file or folder (default: chitchat; "
                           f"with --train and a --data-dir that is already preprocessed, the data in it as it is)")
    data.add_argument("--format", choices=sorted(READERS), help="the corpus format (default: detected)")
    data.add_argument("--encoding", help="text encoding of the corpus files (default: the format's own)")
    data.add_argument("--data-dir", type=Path, help="where preprocessed data goes (default: data/CORPUS-PRESET)")
    data.add_argument("--corpora-dir", type=Path, default=Path("corpora"), help="where named corpora live")
    data.add_argument("--embeddings", type=Path, metavar="PATH",
                      help="a pretrained word2vec (.bin or text) or GloVe file instead of training word2vec")
    data.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                      help=f"named settings from ergo/config.py (default: {DEFAULT_PRESET})")
    data.add_argument("--max-vocab", type=int, help="override the preset's vocabulary size")
    data.add_argument("--min-count", type=int, help="override the preset's minimum word count")
    data.add_argument("--context-turns", type=int, help="override the preset's context window (turns)")
    data.add_argument("--embedding-dim", type=int, help="override the preset's word2vec (and embedding) size")
    data.add_argument("--jobs", type=int, help="processes for tokenising (default: all cores)")
    data.add_argument("--force", action="store_true", help="rebuild preprocessed data even if up to date")

    tr = p.add_argument_group("training")
    tr.add_argument("--model-dir", type=Path, action="append",
                    help="the run folder (default: checkpoints/CORPUS-PRESET); its best/ bundle is what "
                         "--chat, --evaluate, --export and --serve use; --serve takes several, side by side")
    tr.add_argument("--init-from", type=Path, metavar="BUNDLE",
                    help="fine-tune this bundle (or run folder's best/): start from its weights, encode --corpus "
                         "with its vocabulary and data settings, keep its reply selector; a new run folder")
    tr.add_argument("--resume", action="store_true", help="continue the run in --model-dir where it stopped")
    tr.add_argument("--minutes", type=float,
                    help="train for this many minutes of wall-clock time (validation and saving included), then "
                         "keep the best bundle and stop; --epochs, if given too, can end it sooner")
    tr.add_argument("--validate-every", type=float, metavar="MINUTES",
                    help="validate and save every MINUTES, within epochs too (default with --minutes: a tenth "
                         "of the budget, at least 1, longer where validating would take over 5%% of the time; "
                         "without: at the end of each epoch)")
    tr.add_argument("--save-every", type=float, metavar="MINUTES",
                    help="save the latest checkpoint at least every MINUTES, within epochs too, so that a kill "
                         "loses at most that much training (default 10; 0: only at validations)")
    tr.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    tr.add_argument("--batch-size", type=int, help="override the preset's batch size")
    tr.add_argument("--learning-rate", type=float, help="override the preset's learning rate")
    tr.add_argument("--lr-decay", type=float, help="multiply the learning rate by this after every epoch")
    tr.add_argument("--patience", type=int, help="epochs without a better validation perplexity before stopping")
    tr.add_argument("--final-lr", type=float, metavar="SHARE",
                    help="with --minutes: the learning rate falls linearly to this share of its start by the "
                         "budget's end (1: constant)")
    tr.add_argument("--warmup", type=float, metavar="SHARE",
                    help="with --minutes: the share of the budget over which the learning rate rises from 0")
    tr.add_argument("--label-smoothing", type=float, metavar="E",
                    help="train towards 1-E on the true word and E spread over the vocabulary (full softmax only)")
    tr.add_argument("--hidden", type=int, help="override the preset's LSTM size")
    tr.add_argument("--layers", type=int, help="override the preset's number of LSTM layers")
    tr.add_argument("--attention", choices=ATTENTION, help=f"override the attention kind: {described(ATTENTION)}")
    tr.add_argument("--dropout", type=float, help="override the preset's dropout")
    tr.add_argument("--sampled-softmax", type=int, metavar="N",
                    help="train with N sampled classes instead of the full softmax (validation stays exact)")
    tr.add_argument("--freeze-embeddings", action="store_true", default=None,
                    help="keep the word2vec vectors fixed while training")
    tr.add_argument("--no-word2vec", action="store_true",
                    help="start the embeddings at random instead of from word2vec (for comparison)")
    tr.add_argument("--mixed-precision", action="store_true", default=None, help="float16 compute on a GPU")
    tr.add_argument("--selector", choices=SELECTOR_ENCODERS,
                    help="the reply selector's towers: bow (averaged word vectors, the default), lstm, or none")
    tr.add_argument("--selector-share", type=float, metavar="SHARE",
                    help="with --minutes: the share of the budget the selector trains for (default 0.1); "
                         "--train-selector trains for --minutes itself")

    rep = p.add_argument_group("replies (--chat, --evaluate, --export)")
    rep.add_argument("--mode", choices=MODES, help=f"how replies are found: {described(MODES)}")
    rep.add_argument("--decoder", choices=DECODERS, help=f"how replies are generated: {described(DECODERS)}")
    rep.add_argument("--beam-size", type=int, help="beam width")
    rep.add_argument("--temperature", type=float, help="sampling temperature")
    rep.add_argument("--mmi", type=float, help="weight of the anti-generic (MMI) penalty, 0 to 1")
    rep.add_argument("--blocklist", type=Path, help="a file of words/patterns never to say (default: ergo/blocklist.txt)")
    rep.add_argument("--split", default="test", choices=SPLITS, help="the split --evaluate uses")
    rep.add_argument("--export-dir", type=Path, help="where --export writes (default: export/ beside the bundle, so "
                                                  "MODEL_DIR/export for a training run's folder)")

    web = p.add_argument_group("web (--serve)")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    web.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    web.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default: 2)")
    web.add_argument("--traffic", metavar="SHARES",
                     help="with several --model-dir: each one's share of new conversations, e.g. 50,50 (default: "
                          "equal)")
    web.add_argument("--rated", choices=RATED, default="up",
                     help=f"which conversations --export-conversations writes: {described(RATED)} (default: up)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def data_config(args):
    from ergo.config import get_preset, override
    return override(get_preset(args.preset).data, max_vocab=args.max_vocab, min_count=args.min_count,
                    context_turns=args.context_turns, embedding_dim=args.embedding_dim)


def model_and_train_config(args, init=None):
    """The model settings (the preset's, or those of the bundle `init` that is fine-tuned) and the training
    settings, each with the flags given."""
    from ergo.config import get_preset, override
    preset = get_preset(args.preset)
    model = override(init.model_config if init else preset.model, hidden=args.hidden, layers=args.layers,
                     attention=args.attention, dropout=args.dropout, sampled_softmax=args.sampled_softmax,
                     freeze_embeddings=args.freeze_embeddings)
    # A budget is the run's length: the preset's epochs do not cut it short, an explicit --epochs does.
    epochs = args.epochs if args.epochs is not None or not args.minutes else UNBOUNDED_EPOCHS
    train = override(preset.train, epochs=epochs, minutes=args.minutes, validate_every=args.validate_every,
                     save_every=args.save_every, batch_size=args.batch_size,
                     learning_rate=args.learning_rate, lr_decay=args.lr_decay, patience=args.patience,
                     final_lr=args.final_lr, warmup=args.warmup, label_smoothing=args.label_smoothing,
                     mixed_precision=args.mixed_precision)
    return model, train


def selector_config(args):
    from ergo.config import get_preset, override
    return override(get_preset(args.preset).selector, encoder=args.selector, share=args.selector_share)


def reply_settings(args) -> dict:
    given = {"mode": args.mode, "decoder": args.decoder, "beam_size": args.beam_size,
             "temperature": args.temperature, "mmi": args.mmi}
    return {k: v for k, v in given.items() if v is not None}


def corpus_name(args) -> str:
    from ergo import corpora
    return corpora.resolve(args.corpus or DEFAULT_CORPUS, args.format, args.corpora_dir).name


def run_dir(args) -> Path:
    return args.model_dir or Path("checkpoints") / f"{corpus_name(args)}-{args.preset}"


def bundle_dir(args, folder: Path | None = None) -> Path:
    """The bundle the reply commands use: FOLDER/best, or FOLDER itself when it is a bundle (FOLDER: the
    --model-dir, or the run folder the same --corpus and --preset train into)."""
    folder = folder or run_dir(args)
    if (folder / "best" / "config.json").is_file():
        return folder / "best"
    if (folder / "config.json").is_file():
        return folder
    raise ErgoError(f"no trained model in {folder}/: train one with `python main.py --train`"
                    f"{' --preset ' + args.preset if args.preset != 'quick' else ''}, or pass --model-dir")


def run(args) -> None:
    from ergo import corpora
    if args.download:
        from ergo.corpora.download import download
        folder = download(args.download, args.corpora_dir, progress=not args.quiet)
        print(f"{args.download} corpus ready in {folder}/ (preprocess it with "
              f"`python main.py --preprocess --corpus {args.download}`)")
    data = None
    init = _fine_tuned(args)
    if args.train and not args.preprocess and args.corpus is None and args.data_dir \
            and (args.data_dir / "manifest.json").is_file():
        from ergo.dataset import PreparedData, describe
        data = PreparedData.open(args.data_dir)  # a prepared folder, trained on as it is (its own data settings)
        describe(data, True)
    elif args.preprocess or args.train:
        from ergo.dataset import describe, preprocess
        corpus = corpora.resolve(args.corpus or DEFAULT_CORPUS, args.format, args.corpora_dir)
        out = args.data_dir or Path("data") / f"{corpus.name}-{_suffix(args, init)}"
        fixed = None
        if init is not None:
            from ergo.training import fine_tuning
            _device()
            fixed = fine_tuning(init)
        data, reused = preprocess(corpus, init.data_config if init else data_config(args), out,
                                  embeddings=args.embeddings, fixed=fixed, encoding=args.encoding, workers=args.jobs,
                                  progress=not args.quiet, force=args.force)
        describe(data, reused)
    if args.train:
        from ergo.training import train
        model_cfg, train_cfg = model_and_train_config(args, init)
        folder = args.model_dir or Path("checkpoints") / f"{data.manifest['corpus']['name']}-{_suffix(args, init)}"
        _device()
        state = train(data, model_cfg, train_cfg, folder, selector_cfg=selector_config(args), resume=args.resume,
                      progress=not args.quiet, init_embeddings=not args.no_word2vec, init_from=init)
        print(f"best model: {folder}/best/ (validation perplexity {state.best_valid_ppl:.2f} at epoch "
              f"{state.best_epoch}); curves in {folder}/curves.png, TensorBoard: tensorboard --logdir {folder}/logs")
    if args.train_selector:
        from ergo.training import add_selector
        bundle = bundle_dir(args)
        _device()
        add_selector(bundle, args.data_dir or _trained_on(bundle), selector_config(args), minutes=args.minutes or 0.0,
                     progress=not args.quiet)
        print(f"reply selector added to {bundle}/ (its weight in the ranking: {bundle}/ranking.json)")
    if args.evaluate:
        from ergo.evaluation import evaluate, headline
        bundle = bundle_dir(args)
        _device()
        report = evaluate(bundle, args.data_dir or _trained_on(bundle), args.split,
                          log=lambda m: print(m, file=sys.stderr))
        print(headline(report))
        print(f"report: {bundle}/report.md and report.json")
    if args.export:
        from ergo.export import export
        bundle = bundle_dir(args)
        _device()
        target = export(bundle, args.export_dir or bundle.parent / "export", reply_settings(args))
        print(f"SavedModel written to {target}/; serve it with: docker run -p 8501:8501 "
              f"-v {target.parent.resolve()}:/models/ergo -e MODEL_NAME=ergo tensorflow/serving")
    if args.chat:
        from ergo.chatbot import Chatbot
        from ergo.quiet import without_notes
        from ergo.terminal import chat
        bundle = bundle_dir(args)
        _device()
        with without_notes():  # the model's first graphs add one more TensorFlow note (ergo/quiet.py)
            bot = Chatbot.load(bundle, blocklist=args.blocklist)
            bot.reply(["hello"], **reply_settings(args))  # traced now, not on the first line's time
        chat(bot, settings=reply_settings(args))
    if args.serve:
        from web.serve import run as serve
        serve([bundle_dir(args, d) for d in args.model_dirs] or [bundle_dir(args)], args.host, args.port,
              args.workers, traffic=args.traffic)
    if args.export_conversations:
        from ergo.bundle import home
        from web.export import export_conversations
        report = export_conversations(home(run_dir(args)), args.export_conversations, args.rated,
                                      progress=not args.quiet)
        print(report.summary())


DATA_FLAGS = ("max_vocab", "min_count", "context_turns", "embedding_dim", "embeddings", "no_word2vec")
SHAPE_FLAGS = ("hidden", "layers", "attention")


def _fine_tuned(args):
    """The bundle --init-from names, loaded, once the flags that would contradict it are refused: its
    vocabulary, data settings and model shape are what fine-tuning keeps."""
    if args.init_from is None:
        return None
    if not args.train:
        raise ErgoError("--init-from goes with --train (fine-tune a bundle on --corpus)")
    given = [f"--{f.replace('_', '-')}" for f in (*DATA_FLAGS, *SHAPE_FLAGS) if getattr(args, f) not in (None, False)]
    if given:
        raise ErgoError(f"{', '.join(given)} cannot change a bundle that --init-from fine-tunes: its vocabulary, "
                        f"data settings and model shape are kept")
    from ergo.bundle import Bundle
    return Bundle.load(bundle_dir(args, args.init_from))


def _suffix(args, init) -> str:
    """What names a run (and its data folder) besides the corpus: the preset, or the bundle it fine-tunes."""
    return f"from-{init.name}" if init is not None else args.preset


def _device() -> None:
    """The device line, once, where the first TensorFlow work begins: after the checks of a user's paths,
    so that a mistake there still gets its one line alone."""
    if _device.line:
        print(_device.line, file=sys.stderr)
        _device.line = None


_device.line = None


def _trained_on(bundle: Path) -> Path:
    """The data folder a bundle was trained on, as its metrics card records it."""
    from ergo.bundle import Bundle
    recorded = Bundle.load(bundle).card.get("data_dir")
    if not recorded:
        raise ErgoError(f"{bundle} does not say which data it was trained on: pass --data-dir")
    return Path(recorded)


def main(argv: list[str] | None = None) -> int:
    """The command; also callable in process (a test, a notebook), which it leaves as it found it: the
    environment variable below is set only while it runs (TensorFlow reads it as it starts)."""
    given = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides our output
    try:
        return _main(argv)
    finally:
        if given is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        _device.line = None  # a mistake before the first TensorFlow work leaves it unsaid


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not any(getattr(args, a) for a in ACTIONS):
        parser.print_usage(sys.stderr)
        print(f"main.py: nothing to do: give one of {', '.join('--' + a.replace('_', '-') for a in ACTIONS)} "
              f"(see --help)", file=sys.stderr)
        return 2
    args.model_dirs, args.model_dir = args.model_dir or [], (args.model_dir or [None])[0]
    try:
        if len(args.model_dirs) > 1 and any(getattr(args, a) for a in ACTIONS if a != "serve"):
            raise ErgoError("only --serve takes several --model-dir (bundles side by side); give the other "
                            "commands one")
        if any(getattr(args, a) for a in TENSORFLOW_ACTIONS):
            from ergo.quiet import start_tensorflow
            _device.line = start_tensorflow()
        run(args)
    except ErgoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything already written is kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
