"""Does word2vec initialisation earn its place? Validation perplexity after the same training with and
without it, on the default corpus.

    python bench/word2vec_init.py [--preset quick] [--epochs 2] [--hidden H] [--data-dir DIR]

Both runs share the data, the seed, the model and the number of steps; only the embeddings' starting
point differs (word2vec vectors vs Keras's uniform random init). Runs go into a temp folder; the data
into data/chitchat-<preset> (as main.py --preprocess puts it), reused when it is already there.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ergo import corpora  # noqa: E402
from ergo.config import get_preset, override  # noqa: E402
from ergo.dataset import PreparedData, preprocess  # noqa: E402
from ergo.training import train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--hidden", type=int)
    p.add_argument("--data-dir", type=Path)
    args = p.parse_args()
    args.data_dir = args.data_dir or Path(f"data/chitchat-{args.preset}")
    preset = get_preset(args.preset)
    data, _ = preprocess(corpora.resolve("chitchat"), preset.data, args.data_dir, progress=False)
    model_cfg = override(preset.model, hidden=args.hidden)
    train_cfg = override(preset.train, epochs=args.epochs, patience=args.epochs)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for init in (True, False):
            state = train(PreparedData.open(data.path), model_cfg, train_cfg, Path(tmp) / str(init),
                          init_embeddings=init, progress=False, log=lambda *_: None)
            results[init] = state.best_valid_ppl
            print(f"word2vec init={init}: best validation perplexity {state.best_valid_ppl:.2f} "
                  f"after {args.epochs} epochs ({state.seconds:.0f} s)", flush=True)
    print(f"word2vec lowers validation perplexity by {(1 - results[True] / results[False]):.1%} "
          f"(preset {args.preset}, hidden {model_cfg.hidden}, {args.epochs} epochs)")


if __name__ == "__main__":
    main()
