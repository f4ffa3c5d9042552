"""The PyTorch-free runtime: ONNX Runtime, NumPy and tokenizers only.

>>> from bert_onnx.runtime import Encoder
>>> enc = Encoder("bert-base-uncased-onnx")
>>> out = enc.encode(["I love Korea"], padding="max_length", max_length=7)
>>> out.last_hidden_state.shape, out.pooler_output.shape, len(out.hidden_states)
((1, 7, 768), (1, 768), 13)
"""

from bert_onnx.manifest import Manifest, ModelFolderError
from bert_onnx.runtime.encoder import Encoder, EncoderOutput
from bert_onnx.runtime.openvino_backend import BackendError
from bert_onnx.runtime.pooling import COMBINES, POOLINGS
from bert_onnx.runtime.recipe import EmbedRecipe
from bert_onnx.runtime.session import DEVICES, ProviderError
from bert_onnx.runtime.tokenizer import TextTooLongError, TokenizedBatch, Tokenizer

__all__ = [
    "COMBINES",
    "DEVICES",
    "POOLINGS",
    "BackendError",
    "EmbedRecipe",
    "Encoder",
    "EncoderOutput",
    "Manifest",
    "ModelFolderError",
    "ProviderError",
    "TextTooLongError",
    "TokenizedBatch",
    "Tokenizer",
]
