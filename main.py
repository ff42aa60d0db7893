"""ErGo's one command. A thin layer over the ergo/ library: parse, call, print, exit.

A user's mistake (a wrong path, a bad corpus, a mismatched checkpoint) ends with one line on stderr
and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ergo.errors import ErgoError


def build_parser() -> argparse.ArgumentParser:
    from ergo.config import DEFAULT_PRESET, PRESETS
    from ergo.corpora import NAMED, READERS

    p = argparse.ArgumentParser(
        prog="main.py", description="ErGo: train a seq2seq chatbot on dialogs and chat with it.",
        epilog="Corpus formats and examples: corpora/README.md")
    act = p.add_argument_group("what to do (one or more, run in this order)")
    act.add_argument("--download", metavar="NAME", choices=("cornell", "ubuntu"),
                     help="fetch a corpus from its official address into corpora/NAME/ (cornell, ubuntu)")
    act.add_argument("--preprocess", action="store_true",
                     help="corpus -> tokens -> vocabulary -> pickled id sequences + word2vec")

    data = p.add_argument_group("data")
    data.add_argument("--corpus", default="chitchat",
                      help=f"a named corpus ({', '.join(NAMED)}) or a PATH to a file or folder (default: chitchat)")
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
    data.add_argument("--workers", type=int, help="processes for tokenising (default: all cores)")
    data.add_argument("--force", action="store_true", help="rebuild preprocessed data even if up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def data_config(args):
    from ergo.config import get_preset, override
    return override(get_preset(args.preset).data, max_vocab=args.max_vocab, min_count=args.min_count,
                    context_turns=args.context_turns)


def run(args) -> None:
    from ergo import corpora
    if args.download:
        from ergo.corpora.download import download
        folder = download(args.download, args.corpora_dir, progress=not args.quiet)
        print(f"{args.download} corpus ready in {folder}/ (preprocess it with "
              f"`python main.py --preprocess --corpus {args.download}`)")
    if args.preprocess:
        from ergo.dataset import describe, preprocess
        corpus = corpora.resolve(args.corpus, args.format, args.corpora_dir)
        out = args.data_dir or Path("data") / f"{corpus.name}-{args.preset}"
        data, reused = preprocess(corpus, data_config(args), out, embeddings=args.embeddings,
                                  encoding=args.encoding, workers=args.workers, progress=not args.quiet,
                                  force=args.force)
        describe(data, reused)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.download or args.preprocess):
        parser.print_usage(sys.stderr)
        print("main.py: nothing to do: give --download NAME or --preprocess (see --help)", file=sys.stderr)
        return 2
    try:
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
