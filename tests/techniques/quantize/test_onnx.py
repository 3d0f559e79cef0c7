"""Preparing the float graph quietly (leanml/techniques/quantize/_onnx.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

from leanml.techniques.quantize._onnx import quiet_quantizer


def test_quiet_quantizer_leaves_the_root_logger_and_other_loggers_alone(caplog):
    root = logging.getLogger()
    level, handlers, filters = root.level, list(root.handlers), list(root.filters)
    with caplog.at_level(logging.WARNING), quiet_quantizer():
        logging.getLogger("someone.else").warning("kept")
        logging.warning("kept too")  # noqa: LOG015 - the quantizer logs on the root logger too
        logging.getLogger("onnxruntime.quantization.x").warning("dropped")
        # what the quantizer's own `logging.warning(...)` produces: a root record from its files
        ort_file = str(Path(ort.__file__).parent / "quantization" / "quantize.py")
        root.handle(root.makeRecord("root", logging.WARNING, ort_file, 1, "dropped", (), None))
        assert root.level == level
    assert [r.getMessage() for r in caplog.records] == ["kept", "kept too"]
    assert (root.level, root.handlers, root.filters) == (level, handlers, filters)
    assert logging.getLogger("onnxruntime").level == logging.NOTSET
