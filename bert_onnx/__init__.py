"""bert-onnx: export BERT to ONNX with every hidden state, and run it without PyTorch.

``bert_onnx.runtime`` needs only onnxruntime, numpy and tokenizers; ``bert_onnx.export`` needs the ``export`` extra.
Importing this package imports neither.
"""

__version__ = "0.1.0"
