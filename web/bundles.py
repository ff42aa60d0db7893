"""The bundles a web worker serves side by side (`--serve --model-dir A --model-dir B --traffic 50,50`), and
the hot swap: a bundle folder that training replaces (a run's best/) is loaded anew between requests.

Each new conversation is assigned one bundle and keeps it: its name rides in the signed session cookie, so
every worker of every replica answers that conversation with the same bundle, Redis or not. Assignment
follows the traffic shares by a low-discrepancy sequence (golden-ratio steps from a random start, in each
worker) rather than by a coin: over 100 conversations the split stays within a few conversations of the
shares, where coins stray by ten or more.

Every worker looks at its bundles' folders every `reload_seconds`. When a folder's files changed, it loads
and warms the new bundle in its watcher thread while the old one answers, then swaps it in: a request keeps
the bot it started with, so none fails. A new bundle that does not load or reply is refused, logged once,
and the old one kept.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from ergo.bundle import Bundle, bundle_name
from ergo.errors import ErgoError

log = logging.getLogger("ergo.web.bundles")
GOLDEN = (math.sqrt(5) - 1) / 2  # the step whose multiples spread most evenly over [0, 1)


@dataclass(frozen=True)
class Spec:
    """A bundle as --serve was given it: where it is, what it is called, its share of new conversations."""

    name: str
    path: Path
    share: float


def specs(paths: Sequence[Path], traffic: str | None = None) -> list[Spec]:
    """The checked bundles to serve: each loads (a bad one is one line here, before any worker starts), none
    is given twice, each has a name of its own (its run folder's; -2, -3 ... where two share one), and
    `traffic` ("50,50": one share per bundle, in any unit; default: equal) sums to more than 0."""
    paths = [Path(p).resolve() for p in paths]
    if not paths:
        raise ErgoError("no bundle to serve")
    for path in paths:
        Bundle.load(path)
        if paths.count(path) > 1:
            raise ErgoError(f"{path} is given twice: give each --model-dir once")
    shares = parse_traffic(traffic, len(paths))
    names: list[str] = []
    for path in paths:
        name, k = bundle_name(path), 1
        while name in names:
            k += 1
            name = f"{bundle_name(path)}-{k}"
        names.append(name)
    return [Spec(name, path, share) for name, path, share in zip(names, paths, shares)]


def parse_traffic(traffic: str | None, n: int) -> list[float]:
    """--traffic as shares that sum to 1."""
    if traffic is None or not traffic.strip():
        return [1.0 / n] * n
    try:
        values = [float(v) for v in traffic.split(",")]
    except ValueError:
        raise ErgoError(f"--traffic must be numbers separated by commas, one per --model-dir (e.g. 50,50), "
                        f"not {traffic!r}") from None
    if len(values) != n:
        raise ErgoError(f"--traffic gives {len(values)} share(s) for {n} bundle(s): give one per --model-dir, "
                        f"in the same order")
    if not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise ErgoError(f"--traffic shares must be 0 or more, and not all 0: {traffic!r}")
    return [v / sum(values) for v in values]


def signature(path: Path) -> tuple | None:
    """What changes when a bundle folder is replaced or one of its files rewritten (training renames a new
    best/ into place; the end of a run rewrites its ranking.json): the folder's inode and every entry's name,
    size and time. None while it is absent (between training's two renames)."""
    try:
        entries = tuple(sorted((e.name, e.inode(), e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path)))
        return os.stat(path).st_ino, entries
    except OSError:
        return None


def _no_retracing_note(record: logging.LogRecord) -> bool:
    """TensorFlow warns when a method's tf.function has traced 5 times, counting every instance: the bots
    a worker swaps in are new instances, each tracing once, as they should."""
    return "triggered tf.function retracing" not in record.getMessage()


class Live(NamedTuple):
    """A bundle's bot and its version (a digest of its weights), swapped as one: a request reads both at once."""

    bot: object
    version: str


class Served:
    """One bundle as a worker serves it now."""

    def __init__(self, spec: Spec, live: Live, signature: tuple | None):
        self.spec, self.live, self.signature = spec, live, signature
        self.refused: tuple | None = None  # the signature of a new bundle that failed: not tried again
        self.loaded_at = time.time()

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> dict:
        return {"name": self.name, "version": self.live.version, "traffic": round(self.spec.share, 4),
                "loaded_at": round(self.loaded_at, 3)}


class Bundles:
    """The bundles of one worker, by name; `load(path)` makes a warmed bot (web.app.load_bot)."""

    def __init__(self, specs: Sequence[Spec], load: Callable[[Path], object]):
        self._load = load
        self.served = {}
        for spec in specs:
            sig = signature(spec.path)
            bot = load(spec.path)
            self.served[spec.name] = Served(spec, Live(bot, bot.bundle.version()), sig)
        self._bounds = [sum(s.share for s in specs[:i + 1]) for i in range(len(specs))]
        self._u = random.random()  # where this worker's sequence starts
        self._lock = threading.Lock()
        self._frozen = True  # what the app loaded first is frozen (gc.freeze) until a swap drops some of it

    def __iter__(self):
        return iter(self.served.values())

    def __len__(self) -> int:
        return len(self.served)

    @property
    def first(self) -> Served:
        return next(iter(self.served.values()))

    def get(self, name) -> Served | None:
        return self.served.get(name) if isinstance(name, str) else None

    def assign(self) -> Served:
        """The bundle of a new conversation: the next point of this worker's sequence, in the shares."""
        with self._lock:
            self._u = (self._u + GOLDEN) % 1.0
            u = self._u
        for bound, served in zip(self._bounds, self.served.values()):
            if u < bound and served.spec.share > 0:
                return served
        return max(self.served.values(), key=lambda s: s.spec.share)  # u past the last bound by rounding

    # -- the hot swap ----------------------------------------------------------------------------

    def watch(self, seconds: float) -> None:
        """check() every `seconds` from a thread of this worker (0: never)."""
        if seconds > 0:
            threading.Thread(target=self._watch, args=(seconds,), name="bundle-watcher", daemon=True).start()

    def _watch(self, seconds: float) -> None:
        while True:  # a daemon thread: it ends with its worker
            time.sleep(seconds)
            self.check()

    def check(self) -> list[str]:
        """Load every bundle whose folder changed since it was loaded, and swap it in; returns the names of
        those swapped."""
        return [served.name for served in self.served.values() if self._renew(served)]

    def _renew(self, served: Served) -> bool:
        now = signature(served.spec.path)
        if now is None or now in (served.signature, served.refused):
            return False
        started = time.perf_counter()
        tensorflow = logging.getLogger("tensorflow")
        tensorflow.addFilter(_no_retracing_note)
        try:
            bot = self._load(served.spec.path)
            live = Live(bot, bot.bundle.version())
        except Exception as e:  # noqa: BLE001 - whatever is wrong with the new files, the old bundle stays
            if signature(served.spec.path) != now:  # replaced again while it loaded: look at the newer one
                return False
            served.refused = now
            reason = str(e) if isinstance(e, ErgoError) else f"{type(e).__name__}: {e}"
            log.error("bundle %s: the new files in %s are refused, version %s stays: %s",
                      served.name, served.spec.path, served.live.version, reason)
            return False
        finally:
            tensorflow.removeFilter(_no_retracing_note)
        old = served.live.version
        served.live, served.signature, served.refused, served.loaded_at = live, now, None, time.time()
        log.warning("bundle %s: version %s swapped in for %s (loaded and warmed in %.1f s)", served.name,
                    live.version, old, time.perf_counter() - started)
        self._forget()
        return True

    def _forget(self) -> None:
        """Let the replaced bot's memory go: the app froze what it loaded first (gc.freeze, so collections
        skip it), and a frozen object is never collected, so the first swap unfreezes it. A request that
        still holds the old bot keeps it until it is done; the next collection frees it then."""
        from ergo.decoding import release  # keras: here, not in the master process that checks the bundles
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
        release()
