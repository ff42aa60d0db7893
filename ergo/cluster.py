"""Training on several machines (TensorFlow's MultiWorkerMirroredStrategy, set up by TF_CONFIG): which
worker this process is, where it writes, and the decisions that all workers must take together.

Data: every worker draws the same batch order (ergo/batching.py) and keeps its own slice of every
batch (tf.data's DATA sharding, set in batching.as_keras_data). The steps of an epoch, the resume
position and the loss's scale are then those of one machine; the cost is that each worker pads the
rows it does not keep, which is small beside a training step.

Decisions: whether to validate, save or stop, and a budget's learning rate for the next step, come
from each worker's own wall clock. Workers that disagree would part ways, and the one that stepped on
would wait forever in its next all-reduce; so each decision is the largest of all workers' values
(`Cluster.agree`, one all-reduce of a few numbers per step).

Writes: only the chief writes the run folder. Every other worker keeps its latest/ checkpoints in a
run folder of its own beside it (`RUN.worker-K/`), and resumes from there.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Cluster:
    workers: int = 1
    index: int = 0  # 0: the chief, the worker that writes the run folder
    strategy: object = None

    @property
    def chief(self) -> bool:
        return self.index == 0

    @classmethod
    def current(cls) -> "Cluster":
        """The cluster of the tf.distribute strategy in scope; one worker outside MultiWorkerMirroredStrategy."""
        import keras
        if keras.backend.backend() != "tensorflow":
            return cls()
        import tensorflow as tf
        strategy = tf.distribute.get_strategy()
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return cls()
        resolver = strategy.cluster_resolver
        spec = resolver.cluster_spec()
        jobs = spec.jobs
        workers = sum(spec.num_tasks(job) for job in ("chief", "worker") if job in jobs)
        if workers <= 1:
            return cls()
        index = int(resolver.task_id or 0) + (1 if resolver.task_type == "worker" and "chief" in jobs else 0)
        return cls(workers, index, strategy)

    def run_dir(self, model_dir: Path) -> Path:
        """Where this worker keeps its run: the run folder for the chief, one of its own for the others."""
        model_dir = Path(model_dir)
        return model_dir if self.chief else model_dir.with_name(f"{model_dir.name}.worker-{self.index}")

    def prepare(self, model) -> None:
        """Under several workers, a model's train and test steps log vectors of one value: Keras 3
        reduces the logs along an axis 0 that a scalar lacks (keras-team/keras#20585)."""
        if self.workers > 1:
            model.train_step, model.test_step = _vector_logs(model.train_step), _vector_logs(model.test_step)

    @contextlib.contextmanager
    def fitting(self, model):
        """The scope a Keras `fit` runs in. Under several workers, Keras 3 first all-reduces a batch of
        the data only to read its shapes, which fails on MultiWorkerMirroredStrategy
        (keras-team/keras#20585); a model built before its fit needs no shapes, and one that holds no
        strategy of its own skips that step and takes the strategy in scope."""
        if self.workers == 1:
            yield
            return
        held, model._distribute_strategy = model._distribute_strategy, None
        try:
            with self.strategy.scope():
                yield
        finally:
            model._distribute_strategy = held

    def agree(self, values) -> np.ndarray:
        """The largest of every worker's `values` (numbers), on every worker; `values` as they are on one."""
        values = np.asarray(values, dtype=np.float64)
        if self.workers == 1:
            return values
        with self.strategy.scope():
            gathered = self._gather(values[None])
        return np.asarray(self.strategy.experimental_local_results(gathered)[0]).max(axis=0)

    @functools.cached_property
    def _gather(self):
        """Every worker's row of numbers, in one compiled all-gather (eager collectives warn and retrace)."""
        import tensorflow as tf

        @tf.function
        def gather(rows):
            return self.strategy.run(lambda r: tf.distribute.get_replica_context().all_gather(tf.identity(r), 0),
                                     args=(rows,))
        return gather

    def same(self, values) -> bool:
        """Whether every worker holds the same `values`."""
        values = np.asarray(values, dtype=np.float64)
        both = self.agree(np.concatenate([values, -values]))
        return bool(np.array_equal(both[:len(values)], -both[len(values):]))


def _vector_logs(step_fn):
    def step(data):
        import tensorflow as tf
        return {name: tf.reshape(value, [1]) for name, value in step_fn(data).items()}
    return step
