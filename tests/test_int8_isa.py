"""int8 ONNX gives the same sums on every x86-64 CPU: AVX2-only, AVX-512 VNNI, AMX.

ONNX Runtime multiplies uint8 activations by int8 weights. Without VNNI (AVX2 only) it uses
``vpmaddubsw``, which adds each pair of products into a signed 16-bit lane and saturates above
32767; 2 x 255 x 127 does not fit. VNNI and AMX accumulate in 32 bits and never saturate. So a
model quantised with 8-bit weights gives different answers on AVX2 machines (the bundled gender
model's probabilities moved by up to 0.45). :func:`tf_models.serve.export.quantize_onnx_int8` uses 7-bit
weights, for which the pair always fits. These tests run ONNX Runtime natively AND on an emulated
AVX2-only CPU (qemu, see conftest), whatever CPU the suite runs on, and check the emulation really
exercises the saturating kernel (8-bit weights do saturate there), so they can fail.
"""

from __future__ import annotations

import json

import numpy as np
from conftest import run_on_emulated_avx2

from tf_models.serve.export import INPUT_NAME, quantize_onnx_int8

K, N = 64, 4

# Prints each model's outputs as JSON: what this CPU (native or emulated) computes.
RUN_MODELS = """
import json, sys
import numpy as np, onnxruntime as ort
x = np.load(sys.argv[1])
out = {}
for path in sys.argv[2:]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out[path] = session.run(None, {"image": x})[0].tolist()
print(json.dumps(out))
"""


def _matmul_model(path) -> np.ndarray:
    """A float32 ONNX ``image @ W`` whose first column is all +1: int8 pairs at 255 x 127 overflow int16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).choice([-1.0, 1.0], size=(K, N)).astype(np.float32)
    weights[:, 0] = 1.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", [INPUT_NAME, "w"], ["out"])], "matmul",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, K])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, N])],
        [numpy_helper.from_array(weights, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return weights


def _quantize_8bit(source, target, inputs: np.ndarray) -> None:
    """What the project did before: 8-bit weights (ONNX Runtime's default range)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Samples(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(inputs[k:k + 1] for k in range(len(inputs)))

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {INPUT_NAME: item}

    quantize_static(str(source), str(target), Samples(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def test_7bit_weights_give_the_same_int8_sums_on_avx2_as_natively(tmp_path):
    weights = _matmul_model(tmp_path / "float.onnx")
    inputs = np.ones((3, K), np.float32)  # the largest activations: quantised to 255
    inputs[1] *= 0.5
    inputs[2, ::2] = 0.0
    np.save(tmp_path / "x.npy", inputs)
    quantize_onnx_int8(tmp_path / "float.onnx", tmp_path / "ours.onnx", inputs)
    _quantize_8bit(tmp_path / "float.onnx", tmp_path / "8bit.onnx", inputs)
    paths = [str(tmp_path / name) for name in ("ours.onnx", "8bit.onnx")]

    import subprocess
    import sys

    native = json.loads(subprocess.run([sys.executable, "-c", RUN_MODELS, str(tmp_path / "x.npy"), *paths],
                                       capture_output=True, text=True, check=True).stdout)
    emulated = json.loads(run_on_emulated_avx2(RUN_MODELS, str(tmp_path / "x.npy"), *paths))
    exact = inputs @ weights
    ours_native, ours_avx2 = np.array(native[paths[0]]), np.array(emulated[paths[0]])
    eight_native, eight_avx2 = np.array(native[paths[1]]), np.array(emulated[paths[1]])
    print(f"column 0, exact {exact[:, 0]}; 7-bit native {ours_native[:, 0]}, AVX2 {ours_avx2[:, 0]}; "
          f"8-bit native {eight_native[:, 0]}, AVX2 {eight_avx2[:, 0]}")
    # The emulation is real: 8-bit weights saturate on AVX2 (about half the true sum of 64)...
    assert abs(eight_avx2[0, 0] - exact[0, 0]) > 0.25 * exact[0, 0]
    # ...while 7-bit weights give the same answer on AVX2 as on this CPU, and the right one.
    np.testing.assert_allclose(ours_avx2, ours_native, atol=1e-5)
    np.testing.assert_allclose(ours_native, exact, atol=0.05 * np.abs(exact).max())


def test_quantised_weights_stay_within_the_non_saturating_range(tmp_path):
    """The file itself: every int8 weight of our quantisation is within +-64 (2 x 255 x 64 < 32768)."""
    import onnx
    from onnx import numpy_helper

    _matmul_model(tmp_path / "float.onnx")
    quantize_onnx_int8(tmp_path / "float.onnx", tmp_path / "ours.onnx", np.ones((2, K), np.float32))
    model = onnx.load(str(tmp_path / "ours.onnx"))
    int8_weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8_weights, "no int8 initializer: the model was not quantised"
    limit = 64  # 7-bit weights
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in int8_weights) <= limit
    assert 2 * 255 * limit <= 32767
