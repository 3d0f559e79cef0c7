"""ONNX Runtime sessions: how every leanml figure reaches the deployed model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..data import Inputs, n_rows, take
from ..errors import InvalidInputError

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX file, or raise one clear error."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"model file {str(p)!r} does not exist")
    try:
        model = onnx.load(str(p))
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - any load/check failure is the file's fault
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInputError(
            f"model file {str(p)!r} is not a valid ONNX model ({first[:200]}); export it with "
            "torch.onnx.export, tf2onnx or skl2onnx"
        ) from None
    return model


class OnnxRunner:
    """An InferenceSession with a fixed thread count that takes leanml inputs.

    Args:
        path: the ONNX file.
        threads: intra-op threads (inter-op is 1, execution sequential), so latencies are comparable.
        output: which output is the model's prediction: a name, or None for ``probabilities`` when
            present (scikit-learn classifiers) and the first output otherwise.
    """

    def __init__(self, path: str | Path, *, threads: int = 1, output: str | None = None) -> None:
        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # noqa: BLE001 - ORT raises several types for a bad file
            raise InvalidInputError(
                f"ONNX Runtime cannot load {str(self.path)!r}: {str(e).splitlines()[0][:300]}"
            ) from None
        self.inputs = self.session.get_inputs()
        outs = [o.name for o in self.session.get_outputs()]
        if output is None:
            output = "probabilities" if "probabilities" in outs else outs[0]
        self.output = output

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def feed(self, x: Inputs) -> dict[str, np.ndarray]:
        """Map leanml inputs onto the session's input names, casting to the declared types."""
        if isinstance(x, dict):
            feed = {}
            for i in self.inputs:
                if i.name in x:
                    feed[i.name] = x[i.name]
                elif len(self.inputs) == 1 and "x" in x:
                    feed[i.name] = x["x"]
                else:
                    raise InvalidInputError(
                        f"the model needs input {i.name!r}; the data has arrays {sorted(x)}"
                    )
        else:
            if len(self.inputs) != 1:
                raise InvalidInputError(
                    f"the model takes {len(self.inputs)} inputs {self.input_names}; give the data "
                    "as an NPZ with one array per input name"
                )
            feed = {self.inputs[0].name: x}
        for i in self.inputs:
            want = _ORT_TO_NUMPY.get(i.type)
            if want is not None and feed[i.name].dtype != want:
                feed[i.name] = feed[i.name].astype(want)
        return feed

    def run(self, x: Inputs) -> np.ndarray:
        """The prediction output for ``x``, as float32."""
        out = self.session.run([self.output], self.feed(x))[0]
        return np.asarray(out, dtype=np.float32) if out.dtype != np.int64 else out

    def predict(self, x: Inputs, *, batch_size: int = 256) -> np.ndarray:
        """Outputs for all of ``x``, run in batches."""
        n = n_rows(x)
        outs = [self.run(take(x, slice(s, s + batch_size))) for s in range(0, n, batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0,))
