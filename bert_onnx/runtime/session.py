"""ONNX Runtime session setup: one place that picks the execution provider and proves it got it."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from bert_onnx.manifest import ModelFolderError

DEVICES: dict[str, str] = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class ProviderError(RuntimeError):
    """The requested device's execution provider is not available, or the session did not use it."""


def create_session(model_path: str | Path, device: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    """An InferenceSession on ``device`` ("cpu" or "cuda"), never silently on another device.

    ``threads`` sets ONNX Runtime's intra-op threads; ``None`` keeps its default (one per physical core).
    """
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not one of {', '.join(DEVICES)}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads={threads!r} must be a positive int or None")
    provider = DEVICES[device]
    available = ort.get_available_providers()
    if provider not in available:
        raise ProviderError(
            f"device={device!r} needs {provider}, which this onnxruntime does not offer "
            f"(available: {', '.join(available)}). For CUDA install onnxruntime-gpu in place of onnxruntime: "
            "pip uninstall -y onnxruntime && pip install 'bert-onnx[gpu]'"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's provider-assignment warnings are noise for users
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # CPU stays listed after CUDA for the few shape ops ORT places there by design; the check below still refuses a
    # session whose first provider is not CUDA, i.e. one where CUDA failed to initialise.
    # TF32 off: PyTorch's fp32 matmuls do not use it by default either, and it costs ~1e-3 of parity.
    providers = [provider] if device == "cpu" else [(provider, {"use_tf32": "0"}), DEVICES["cpu"]]
    path = Path(model_path)
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing model file")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ORT raises its own pybind types (Fail, InvalidProtobuf, ...) for unreadable graphs
        raise ModelFolderError(f"{path}: ONNX Runtime cannot load this model ({exc})") from exc
    used = session.get_providers()
    if not used or used[0] != provider:
        raise ProviderError(
            f"device={device!r} asked for {provider} but the session runs on {used} "
            f"(available: {', '.join(available)}); refusing to fall back silently. "
            "Check the CUDA and cuDNN libraries that onnxruntime-gpu needs."
        )
    return session
