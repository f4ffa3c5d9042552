"""The runtime works where torch, transformers and optimum cannot be imported at all."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np

import bert_onnx

FORBIDDEN = ("torch", "transformers", "optimum")
PACKAGE = Path(bert_onnx.__file__).parent

# Runs in a fresh interpreter: a meta-path finder makes every forbidden import fail, as on a machine without them.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    FORBIDDEN = {forbidden!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                raise ImportError(f"{{name}} is blocked: this test simulates a machine without it")
            return None

    sys.meta_path.insert(0, Block())
    for name in FORBIDDEN:
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"the blocker failed to block {{name}}")

    from bert_onnx.runtime import Encoder
    enc = Encoder(sys.argv[1])
    out = enc.encode(["I love Korea"], padding="max_length", max_length=7)
    vectors = enc.embed(["I love Korea", "second text"], pooling="mean", layers=[-2, -1])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN or m.startswith("bert_onnx.export"))
    print(json.dumps({{
        "ids": out.input_ids.tolist(),
        "mask": out.attention_mask.tolist(),
        "hidden_states": len(out.hidden_states),
        "vectors": vectors.tolist(),
        "loaded": loaded,
    }}))
    """
).format(forbidden=FORBIDDEN)


def test_runtime_runs_with_torch_and_transformers_unimportable(
    export_dir: Callable[[str], Path], encoder: Callable[[str], object]
) -> None:
    folder = export_dir("minilm")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert report["ids"] == [[101, 1045, 2293, 4420, 102, 0, 0]]
    assert report["mask"] == [[1, 1, 1, 1, 1, 0, 0]]
    assert report["hidden_states"] == 7
    # Same numbers as the in-process encoder (which ran next to torch).
    expected = encoder("minilm").embed(["I love Korea", "second text"], pooling="mean", layers=[-2, -1])  # type: ignore[attr-defined]
    np.testing.assert_allclose(np.array(report["vectors"]), expected, atol=1e-6)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_runtime_and_shared_modules_import_nothing_from_the_training_side() -> None:
    """Every import in runtime/ and in the shared modules, even lazy ones inside functions."""
    files = [*(PACKAGE / "runtime").glob("*.py"), PACKAGE / "interface.py", PACKAGE / "manifest.py"]
    files.append(PACKAGE / "_files.py")
    offending = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in files
        for name in _imports(path)
        if name.split(".")[0] in FORBIDDEN or name.startswith("bert_onnx.export")
    }
    assert not offending
