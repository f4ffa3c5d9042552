"""Export side: PyTorch checkpoint to a verified ONNX model folder. Needs the ``export`` extra (torch, transformers).

>>> from bert_onnx.export import export_model
>>> manifest = export_model("bert-base-uncased", "bert-base-uncased-onnx")
"""

from bert_onnx.export.errors import ExportError, ParityError
from bert_onnx.export.graph import DEFAULT_OPSET, SUPPORTED_OPSETS
from bert_onnx.export.pipeline import DEFAULT_MODEL, export_model

__all__ = ["DEFAULT_MODEL", "DEFAULT_OPSET", "SUPPORTED_OPSETS", "ExportError", "ParityError", "export_model"]
