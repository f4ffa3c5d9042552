#!/usr/bin/env bash
# CUDA checks on a GPU machine with no network (run from the repository root there):
#   bash scripts/gpu_check.sh WHEEL [CACHE [RESULTS]]
# WHEEL is an onnxruntime-gpu wheel for that machine's Python, CACHE a folder holding all-MiniLM-L6-v2's vocabulary
# and configs (weights not needed: the checks use the tiny and bert-base-shaped checkpoints, made there with RANDOM
# weights). Installs the wheel under /tmp/site, makes the checkpoints, runs the CUDA tests on the bert-base shape,
# exports fp32/opt/fp16 (fp16's gate runs on CUDA), compares CUDA with CPU through Encoder, and runs
# benchmarks.cuda (PyTorch fp16 SDPA side by side, CUDA graphs, every output against last+pooler), writing its
# results to RESULTS (default /tmp/bert-onnx-results; $OUT/results under the device tool).
set -uo pipefail
wheel=${1:?usage: gpu_check.sh WHEEL [CACHE]}
cache=${2:-/tmp/bert-onnx-cache}
results=${3:-${OUT:+$OUT/results}}
results=${results:-/tmp/bert-onnx-results}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$wheel" || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 BERT_ONNX_CACHE="$cache"
# ONNX Runtime's CUDA provider loads cuBLAS/cuDNN/cuFFT by name: point it at the CUDA wheels PyTorch brought.
LD_LIBRARY_PATH="$(python3 -c 'import sys,glob; print(":".join(sorted({p for s in sys.path for p in glob.glob(s + "/nvidia/*/lib")})))'):${LD_LIBRARY_PATH:-}"
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import onnxruntime as o, torch; print("onnxruntime", o.__version__, o.get_available_providers(), "torch", torch.__version__)'
python3 scripts/prepare_checkpoints.py "$cache/checkpoints" || exit 1
status=0
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "base or refused or tune" -rA || status=1
out=/tmp/bert-onnx-gpu
rm -rf "$out" && python3 -m bert_onnx export "$cache/checkpoints/bert-base-uncased-arch-random-weights" \
    --output "$out" --variants fp32,opt,fp16 || status=1
python3 - "$out" <<'PY' || status=1
import sys, time
import numpy as np
from bert_onnx.runtime import Encoder

folder = sys.argv[1]
texts = ["I love Korea", "A longer sentence, so that the batch has padding in it.", "word " * 300]
cpu = Encoder(folder, variant="fp32")
for variant in ("fp32", "opt", "fp16"):
    gpu = Encoder(folder, device="cuda", variant=variant)
    assert gpu.runner.session.get_providers()[0] == "CUDAExecutionProvider", gpu.runner.session.get_providers()
    a, b = cpu.encode(texts), gpu.encode(texts)
    keep = a.attention_mask.astype(bool)
    worst = max(float(np.abs(x[keep] - y[keep]).max()) for x, y in zip(a.hidden_states, b.hidden_states))
    e_cpu = cpu.embed(texts, pooling="mean", normalize=True)
    e_gpu = gpu.embed(texts, pooling="mean", normalize=True)
    print(f"cuda {variant}: io_binding={gpu.io_binding}, max abs diff to CPU fp32 over hidden states {worst:.3e}, "
          f"min embedding cosine {float(np.sum(e_cpu * e_gpu, axis=1).min()):.6f}")
    ids = np.random.default_rng(0).integers(1000, 30000, size=(32, 128))
    for _ in range(3):
        gpu.run(ids)
    start = time.perf_counter()
    for _ in range(20):
        gpu.run(ids)
    print(f"cuda {variant}: 32 x 128, all outputs: {(time.perf_counter() - start) / 20 * 1000:.2f} ms per call")
print("default CUDA variant:", Encoder(folder, device="cuda").variant)
PY
python3 -m benchmarks.cuda --model-dir "$out" --checkpoint "$cache/checkpoints/bert-base-uncased-arch-random-weights" \
    --variants fp16 opt fp32 --repeats 10 --label "bert-base shape, RANDOM weights" --out "$results" || status=1
export BERT_ONNX_PROFILE_DIR=/tmp/bert-onnx-profiles
python3 -m bert_onnx verify "$out" --device cuda -q || status=1
python3 -m bert_onnx tune "$out" --device cuda -q || status=1
python3 -c "import sys; from bert_onnx.runtime import Encoder; print(Encoder(sys.argv[1], device='cuda').describe())" "$out" || status=1
exit $status
