"""Start TensorFlow without its start-up notes, and say once which device it computes on.

When TensorFlow loads and first looks for devices, its C++ code writes notes straight to the process's
stderr: oneDNN's "custom operations are on", "Could not find cuda drivers", and on a machine without a
GPU "E0000 ... failed call to cuInit: INTERNAL: CUDA error". TF_CPP_MIN_LOG_LEVEL does not reach the ones
written before absl's logging starts, and the cuInit line is logged as an error. They tell a CPU user
nothing and look like failures. `start_tensorflow` imports TensorFlow and lists its devices with file
descriptor 2 pointed at a temp file, then writes back every line that is not one of those notes: a real
warning still shows.

One more note comes later, from the first model graph that asks oneDNN for a bool kernel on a CPU
without AVX-512 ("E0000 ... oneDNN supports DT_BOOL only on platforms with AVX-512. Falling back ...").
A web worker loads and warms its model inside `without_notes`, which drops it; training and the terminal
chat leave it, since catching it there would hold back stderr (progress bars included) while a model runs.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

NOTES = re.compile("|".join((
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers on your machine",
    r"failed call to cuInit",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"TF-TRT Warning: Could not find TensorRT",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* in other operations, rebuild TensorFlow",
    r"oneDNN supports DT_BOOL only on platforms with AVX-512",
)))


@contextlib.contextmanager
def without_notes():
    """File descriptor 2 into a temp file while the block runs; then every line but the notes back."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not NOTES.search(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def start_tensorflow() -> str | None:
    """Import TensorFlow (through Keras) quietly; returns a line naming the device it will use, or None
    where Keras runs on another backend (KERAS_BACKEND)."""
    with without_notes():
        import keras
        if keras.backend.backend() != "tensorflow":
            return None
        import tensorflow as tf
        gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "device: CPU (TensorFlow sees no GPU)"
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    return f"device: {len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({', '.join(names)})"
