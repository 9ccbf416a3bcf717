"""Build the small models of tests/test_compat.py (needs TensorFlow; edged itself does not).

    /work/tfvenv/bin/python tests/make_compat_models.py [OUTDIR]   # default: tests/data/compat

Each is a tiny Keras network on a 16x16 image, converted to TFLite:

* ``all_supported_int8.tflite``: Conv2D+ReLU, MaxPool, Flatten, Dense, Softmax; full int8
  with int8 input and output. Every operator is on the Edge TPU list.
* ``leaky_relu_int8.tflite``: Conv2D, LeakyReLU, Conv2D, Flatten, Dense, Softmax; full int8.
  LEAKY_RELU (not on the list) is operator #1: the compiler cuts there and the rest runs on the CPU.
* ``float_io_int8.tflite``: the all-supported network, full int8 inside but float32 input and
  output (the converter's default): a QUANTIZE first (left on the CPU without a cut) and a
  DEQUANTIZE last (the cut).
* ``float32.tflite``: the all-supported network, not quantised: every operator is flagged.
* ``rank5_int8.tflite``: a Reshape to [1, 2, 4, 8, 4] (four dimensions larger than 1 after the
  batch) and a Transpose of it, full int8: the Reshape is the cut.
* ``limits_int8.tflite``: supported operators breaking their documented limitations: a Conv2D
  with dilation 2 in y and 1 in x (the cut), then a Mean over 3 channels (a z-reduction must
  cover a multiple of 4), full int8.
* ``dynamic_batch_int8.tflite``: the all-supported network without a fixed batch size: Flatten
  becomes SHAPE, STRIDED_SLICE, PACK and a RESHAPE whose shape is computed at run time, a
  dynamic-sized tensor.
* ``dynamic_int8.tflite``: a Conv2D on an input of any height and width (shape signature
  [1, -1, -1, 1]), full int8: dynamic-sized tensors, which the compiler refuses.
* ``fitted_int8.tflite``: what maps by the compiler's behaviour rather than Coral's table: a
  Conv2D with a 3x1 kernel and dilation 2 in y only (the dilation along the 1-wide side changes
  nothing), a Softmax over the channels of a 4-D map, a bilinear 2x upscale; full int8.

The files are committed, so the tests run without TensorFlow; the TensorFlow test rebuilds
them into a temporary directory and checks the same reports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

keras = tf.keras
layers = keras.layers
SIZE = 16


def _seed() -> None:
    keras.utils.set_random_seed(7)


def _representative(shape: tuple[int, ...]):
    rng = np.random.default_rng(0)

    def gen():
        for _ in range(16):
            yield [rng.random((1, *shape), dtype=np.float32)]

    return gen


def _convert(model, shape: tuple[int, ...], quantize: bool, int8_io: bool = True) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)  # the Input's batch_size=1 fixes the batch
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(shape)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter.convert()


def _classifier(leaky: bool = False):
    _seed()
    inp = keras.Input((SIZE, SIZE, 1), batch_size=1)
    x = layers.Conv2D(8, 3, padding="same", activation=None if leaky else "relu")(inp)
    if leaky:
        x = layers.LeakyReLU(negative_slope=0.1)(x)
        x = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(10)(x)
    out = layers.Softmax()(x)
    return keras.Model(inp, out)


def _rank5():
    _seed()
    inp = keras.Input((8, 8, 4), batch_size=1)
    x = layers.Conv2D(4, 1, activation="relu")(inp)
    x = layers.Reshape((2, 4, 8, 4))(x)
    x = layers.Permute((1, 2, 4, 3))(x)  # keeps the 5-D tensor (elementwise ops get folded across reshapes)
    x = layers.Reshape((8, 8, 4))(x)
    x = layers.Flatten()(x)
    out = layers.Dense(10)(x)
    return keras.Model(inp, out)


def _dynamic_batch():
    _seed()
    inp = keras.Input((SIZE, SIZE, 1))  # no batch_size: Flatten computes its shape at run time
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    out = layers.Softmax()(layers.Dense(10)(x))
    return keras.Model(inp, out)


def _limits():
    _seed()
    inp = keras.Input((SIZE, SIZE, 4), batch_size=1)
    x = layers.Conv2D(3, 3, padding="same", dilation_rate=(2, 1), activation="relu")(inp)
    x = layers.Lambda(lambda t: keras.ops.mean(t, axis=-1, keepdims=True))(x)
    x = layers.Flatten()(x)
    out = layers.Dense(10)(x)
    return keras.Model(inp, out)


def _fitted():
    _seed()
    inp = keras.Input((SIZE, SIZE, 4), batch_size=1)
    # a dilation along a 1-wide kernel (compiler 16 maps it), a softmax over the channels of a 4-D
    # map (the table says 1-D; the compiler maps it), an integer bilinear upscale
    x = layers.Conv2D(4, (3, 1), padding="same", dilation_rate=(2, 1), activation="relu")(inp)
    x = layers.Softmax(axis=-1)(x)
    out = layers.UpSampling2D(2, interpolation="bilinear")(x)
    return keras.Model(inp, out)


def _dynamic():
    _seed()
    inp = keras.Input((None, None, 1), batch_size=1)
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    out = layers.Conv2D(2, 1)(x)
    return keras.Model(inp, out)


def build(outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    shape = (SIZE, SIZE, 1)
    models = {
        "all_supported_int8.tflite": _convert(_classifier(), shape, quantize=True),
        "leaky_relu_int8.tflite": _convert(_classifier(leaky=True), shape, quantize=True),
        "float_io_int8.tflite": _convert(_classifier(), shape, quantize=True, int8_io=False),
        "float32.tflite": _convert(_classifier(), shape, quantize=False),
        "rank5_int8.tflite": _convert(_rank5(), (8, 8, 4), quantize=True),
        "limits_int8.tflite": _convert(_limits(), (SIZE, SIZE, 4), quantize=True),
        "dynamic_batch_int8.tflite": _convert(_dynamic_batch(), shape, quantize=True),
        "dynamic_int8.tflite": _convert(_dynamic(), shape, quantize=True),
        "fitted_int8.tflite": _convert(_fitted(), (SIZE, SIZE, 4), quantize=True),
    }
    paths = []
    for name, data in models.items():
        p = outdir / name
        p.write_bytes(data)
        paths.append(p)
    return paths


def main(argv: list[str]) -> int:
    outdir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "data" / "compat"
    for p in build(outdir):
        print(f"{p} ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
