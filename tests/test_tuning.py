"""``bert-onnx verify`` and ``tune``, and the tuned profile ``Encoder`` follows.

Gates are re-measured against the PyTorch references the export stored (``gates.npz``) and must agree with the
numbers the export recorded on this same machine; a damaged int8 graph whose checksum was re-signed must fail.
Profiles are keyed by machine and library versions: a profile from elsewhere is ignored with a note.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import assert_error, cli_env, run_cli
from onnx import numpy_helper

from bert_onnx import choices, interface, machine, tuning
from bert_onnx.gates import Corpus, References, selection
from bert_onnx.manifest import Manifest, ModelFolderError, sha256_file
from bert_onnx.runtime import Encoder, openvino_backend, profile


@pytest.fixture
def profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "profiles"
    monkeypatch.setenv(profile.PROFILE_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_tuned(export_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny export tuned once (1 round, 8 texts): its outcomes and the profile entry it wrote."""
    folder = export_dir("tiny")
    profile_dir = tmp_path_factory.mktemp("tiny-profile")
    outcomes, path, pick = tuning.tune(folder, rounds=1, sample=8, profile_dir=profile_dir)
    return {"folder": folder, "outcomes": outcomes, "path": path, "pick": pick, "body": json.loads(path.read_text())}


def _write_profile(profiles: Path, tuned: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> None:
    """The tuned profile, copied into ``profiles`` with its one entry edited."""
    body = json.loads(json.dumps(tuned["body"]))
    edit(body["entries"][0])
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / tuned["path"].name).write_text(json.dumps(body))


def _fastest(name: str) -> Callable[[dict[str, Any]], None]:
    """Make choice ``name`` the measured fastest in an entry."""

    def edit(entry: dict[str, Any]) -> None:
        for choice in entry["choices"]:
            if choice["passed"]:
                choice["texts_per_second"] = 1000.0 if choice["name"] == name else 1.0

    return edit


# -- the stored references -----------------------------------------------------------------------------------


@pytest.mark.fast
def test_references_round_trip_and_select_what_they_say(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    batch = {name: mask.astype(np.int64) for name in interface.INPUT_NAMES}
    outputs = {
        interface.LAST_HIDDEN_STATE: rng.normal(size=(3, 4, 5)),
        interface.POOLER_OUTPUT: rng.normal(size=(3, 5)),
        "hidden_states.0": rng.normal(size=(3, 4, 5)).astype(np.float32),
    }
    texts = ["ascii", "héllo wörld", "日本語", ""]
    corpora = [
        Corpus("documentation", tuple(texts), np.ones((4, 5))),
        Corpus("informal", ("lol", "ok"), np.ones((2, 5))),
    ]
    refs = References.from_outputs(batch, outputs, short_rows=2, corpora=corpora)
    # last_hidden_state: every row's real tokens (2 + 3 + 4); other hidden states: the 2 short rows' (2 + 3).
    assert refs.outputs[interface.LAST_HIDDEN_STATE].shape == (9, 5)
    assert refs.outputs["hidden_states.0"].shape == (5, 5)
    assert refs.outputs[interface.POOLER_OUTPUT].shape == (3, 5)
    np.testing.assert_array_equal(refs.outputs["hidden_states.0"], outputs["hidden_states.0"][:2][mask[:2] == 1])
    refs.save(tmp_path / "gates.npz")
    loaded = References.load(tmp_path / "gates.npz")
    assert loaded.texts == tuple(texts) and loaded.short_rows == 2
    assert [(c.name, c.texts) for c in loaded.corpora] == [("documentation", tuple(texts)), ("informal", ("lol", "ok"))]
    for name, value in refs.outputs.items():
        np.testing.assert_array_equal(loaded.outputs[name], value)
    assert [c.embeddings.shape for c in loaded.corpora if c.embeddings is not None] == [(4, 5), (2, 5)]
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ModelFolderError, match="not a readable gate-reference file"):
        References.load(tmp_path / "bad.npz")


@pytest.mark.fast
def test_export_stores_references_that_match_its_own_graph(export_dir: Callable[[str], Path]) -> None:
    folder = export_dir("tiny")
    manifest = Manifest.read(folder)
    assert interface.GATES_FILE in manifest.files
    refs = References.load(folder / interface.GATES_FILE)
    assert refs.batch["input_ids"].shape[1] == manifest.max_length and len(refs.texts) == 1000
    assert [c.name for c in refs.corpora] == ["documentation", "informal"] and len(refs.corpora[1].texts) == 1000
    assert not refs.has_embeddings  # no int8 graph, no int8 reference
    encoder = Encoder(folder, variant="fp32")
    out = encoder.run(refs.batch["input_ids"], refs.batch["attention_mask"], refs.batch["token_type_ids"])
    mask = refs.batch["attention_mask"]
    actual = {interface.LAST_HIDDEN_STATE: out.last_hidden_state, interface.POOLER_OUTPUT: out.pooler_output}
    for name, expected in actual.items():
        got = selection(name, expected, mask, refs.short_rows)
        assert np.abs(got - refs.outputs[name]).max() <= interface.FP32_TOLERANCE


# -- verify ----------------------------------------------------------------------------------------------------


def test_verify_passes_a_good_folder_with_the_export_s_numbers(variants_dir: Path) -> None:
    run = run_cli("verify", variants_dir, "--json", timeout=300)
    assert run.returncode == 0, run.describe()
    body = json.loads(run.stdout)
    assert body["passed"] and body["machine"]["isa"] == machine.instruction_sets()
    choices = {c["name"]: c for c in body["choices"]}
    assert list(choices) == ["fp32", "opt", "int8", "openvino-fp32", "openvino-bf16"]
    for name in ("fp32", "opt", "int8", "openvino-fp32"):
        assert choices[name]["status"] == "ok", choices[name]
    if "BF16" in openvino_backend.cpu_capabilities():
        assert choices["openvino-bf16"]["status"] == "ok"
    else:
        assert "bf16 units" in choices["openvino-bf16"]["skipped"]
    # Same machine, same graph, same texts and batching: int8's gate reproduces what export recorded.
    recorded = {c.name: c.value for c in Manifest.read(variants_dir).variants["int8"].checks}
    for check in choices["int8"]["gate"]["checks"]:
        assert check["value"] == pytest.approx(recorded[check["name"]], abs=1e-6), check["name"]


def test_verify_fails_a_damaged_int8_graph_whose_checksum_was_re_signed(variants_dir: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(variants_dir, tmp_path / "model"))
    path = folder / choices.get("int8").file
    model = onnx.load(str(path))
    # Damage every 8-bit weight matrix a little: reverse the order of its rows (the same values, wrong places).
    damaged = 0
    for tensor in model.graph.initializer:
        if tensor.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(tensor.dims) == 2:
            values = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(values[::-1]), tensor.name))
            damaged += 1
    assert damaged >= 6, "no int8 weight matrices found"
    onnx.save(model, str(path))
    manifest = Manifest.read(folder)
    dataclasses.replace(manifest, files={**manifest.files, path.name: sha256_file(path)}).write(folder)
    Encoder(folder, variant="int8")  # the checksums all match: loading cannot tell

    run = run_cli("verify", folder, "--quiet", timeout=300)
    assert_error(run, ("failed its gate here", "int8 ("))
    assert "fp32: ok" in run.stdout and "int8: FAIL" in run.stdout, run.describe()
    assert f"instruction sets: {', '.join(machine.instruction_sets())}" in run.stdout
    assert "opt (" not in run.stderr and "fp32 (" not in run.stderr


@pytest.mark.fast
def test_verify_needs_the_stored_references(export_dir: Callable[[str], Path], tmp_path: Path) -> None:
    folder = Path(shutil.copytree(export_dir("tiny"), tmp_path / "model"))
    (folder / interface.GATES_FILE).unlink()
    with pytest.raises(ModelFolderError, match=r"gates\.npz: missing"):
        tuning.verify(folder)
    manifest = Manifest.read(folder)
    files = {k: v for k, v in manifest.files.items() if k != interface.GATES_FILE}
    dataclasses.replace(manifest, files=files).write(folder)
    with pytest.raises(ModelFolderError, match=r"no gates\.npz .* export it again to verify or tune it"):
        tuning.verify(folder)
    Encoder(folder).embed(["still runs"])  # the folder itself still loads


# -- choices that cannot run here ------------------------------------------------------------------------------


@pytest.mark.fast
def test_a_choice_that_cannot_run_here_is_skipped_with_its_reason(
    tiny_tuned: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda: ("FP32", "INT8"))  # a CPU without bf16
    outcomes, _, pick = tuning.tune(tiny_tuned["folder"], rounds=1, sample=4, profile_dir=tmp_path)
    by_name = {o.name: o for o in outcomes}
    assert by_name["openvino-bf16"].status == "skipped"
    assert "needs a CPU with bf16 units" in str(by_name["openvino-bf16"].skipped)
    assert by_name["openvino-bf16"].texts_per_second is None
    assert by_name["fp32"].passed and by_name["fp32"].texts_per_second and by_name["fp32"].texts_per_second > 0
    assert pick.name in ("fp32", "openvino-fp32")

    def missing() -> Any:
        raise openvino_backend.BackendError("backend='openvino' needs the openvino package: pip install ...")

    monkeypatch.setattr(openvino_backend, "_openvino", missing)
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda: missing())
    reasons = dict(tuning.candidates(Manifest.read(tiny_tuned["folder"]), "cpu"))
    assert reasons["fp32"] is None
    assert "needs the openvino package" in str(reasons["openvino-fp32"])
    assert reasons["openvino-fp32"] == reasons["openvino-bf16"]
    assert "OpenVINO runs on the CPU only" in str(
        dict(tuning.candidates(Manifest.read(tiny_tuned["folder"]), "cuda"))["openvino-fp32"]
    )


# -- the profile Encoder follows -------------------------------------------------------------------------------


@pytest.mark.fast
def test_tune_writes_a_profile_keyed_by_machine_and_versions(tiny_tuned: dict[str, Any]) -> None:
    entry = tiny_tuned["body"]["entries"][0]
    assert tiny_tuned["body"]["format"] == profile.PROFILE_FORMAT
    assert entry["machine"] == profile.machine_key("cpu", None)
    assert entry["versions"] == profile.library_versions()
    names = [c["name"] for c in entry["choices"]]
    assert names[0] == "fp32" and set(names) <= set(choices.NAMES)
    passed = [c for c in entry["choices"] if c["passed"]]
    assert tiny_tuned["pick"].name == max(passed, key=lambda c: c["texts_per_second"])["name"]
    assert tiny_tuned["pick"].reason.startswith("tuned here on ")


@pytest.mark.fast
@pytest.mark.parametrize("pick", ["openvino-fp32", "fp32"])
def test_encoder_follows_the_profile_tuned_here(tiny_tuned: dict[str, Any], profiles: Path, pick: str) -> None:
    _write_profile(profiles, tiny_tuned, _fastest(pick))
    encoder = Encoder(tiny_tuned["folder"])
    assert encoder.choice == pick and encoder.describe()["picked_by"].startswith("tuned here on ")
    # Within a backend the user named, the fastest of that backend's choices.
    assert Encoder(tiny_tuned["folder"], backend="onnxruntime").choice == "fp32"
    assert Encoder(tiny_tuned["folder"], backend="openvino").choice == "openvino-fp32"
    # Asked for, never overridden.
    assert Encoder(tiny_tuned["folder"], variant="fp32").describe()["picked_by"] == "asked for"
    run = run_cli("info", tiny_tuned["folder"], "--no-verify")
    assert run.returncode == 0, run.describe()
    assert re.search(rf"^runs here +{pick} on cpu: tuned here on ", run.stdout, re.MULTILINE), run.stdout


def _versions(entry: dict[str, Any]) -> None:
    entry["versions"]["onnxruntime"] = "0.0.1"


def _other_cpu(entry: dict[str, Any]) -> None:
    entry["machine"]["cpu"] = "Another CPU 9000"


def _other_cores(entry: dict[str, Any]) -> None:
    entry["machine"]["cpus"] = 64


@pytest.mark.fast
@pytest.mark.parametrize(
    ("edit", "note"),
    [
        pytest.param(_versions, "other library versions (onnxruntime '0.0.1', here", id="other-onnxruntime"),
        pytest.param(_other_cpu, "another machine or setting (cpu 'Another CPU 9000', here", id="other-cpu"),
        pytest.param(_other_cores, "another machine or setting (cpus 64, here", id="other-core-count"),
    ],
)
def test_a_profile_from_elsewhere_is_ignored_with_a_note(
    tiny_tuned: dict[str, Any],
    profiles: Path,
    caplog: pytest.LogCaptureFixture,
    edit: Callable[[dict[str, Any]], None],
    note: str,
) -> None:
    def stale(entry: dict[str, Any]) -> None:
        _fastest("openvino-fp32")(entry)
        edit(entry)

    _write_profile(profiles, tiny_tuned, stale)
    with caplog.at_level(logging.WARNING, logger="bert_onnx.runtime.profile"):
        encoder = Encoder(tiny_tuned["folder"])
    assert encoder.choice == "fp32"
    assert note in encoder.describe()["picked_by"] and encoder.describe()["picked_by"].startswith("default (ignored")
    assert any(note in record.getMessage() for record in caplog.records)


@pytest.mark.fast
def test_other_threads_are_another_setting(tiny_tuned: dict[str, Any], profiles: Path) -> None:
    _write_profile(profiles, tiny_tuned, _fastest("openvino-fp32"))
    assert Encoder(tiny_tuned["folder"], threads=1).choice == "fp32"  # tuned with the default threads
    assert Encoder(tiny_tuned["folder"]).choice == "openvino-fp32"


@pytest.mark.fast
def test_an_unreadable_profile_is_ignored(tiny_tuned: dict[str, Any], profiles: Path) -> None:
    profiles.mkdir(parents=True)
    (profiles / tiny_tuned["path"].name).write_text("{ not json")
    encoder = Encoder(tiny_tuned["folder"])
    assert encoder.choice == "fp32" and "no tuned profile" in encoder.describe()["picked_by"]


def test_cli_tune_prints_the_table_and_encoder_then_uses_it(export_dir: Callable[[str], Path], profiles: Path) -> None:
    folder = export_dir("tiny")
    run = run_cli("tune", folder, "--rounds", "1", "--texts", "8", env={profile.PROFILE_ENV: str(profiles)})
    assert run.returncode == 0, run.describe()
    assert "choice" in run.stdout and "<- picked" in run.stdout and "profile saved to" in run.stdout
    assert "tuning" in run.stderr  # the progress bar
    assert len(list(profiles.glob("*.json"))) == 1
    picked = profile.lookup(Manifest.read(folder), "cpu", None).name
    assert picked is not None and f"now runs {picked} on this machine" in run.stdout
    assert Encoder(folder).choice == picked
    bad = run_cli("tune", folder, "--rounds", "0", env={profile.PROFILE_ENV: str(profiles)})
    assert_error(bad, ("--rounds 0",))


@pytest.mark.fast
def test_a_profile_tuned_for_latency_picks_the_fastest_short_text(tiny_tuned: dict[str, Any], profiles: Path) -> None:
    """Throughput and latency can disagree (OpenVINO bf16 and int8 on an AMX Xeon): the profile's objective says
    which measurement Encoder follows. A profile without one is a throughput profile; an unknown one is ignored."""

    def disagree(objective: str | None) -> Callable[[dict[str, Any]], None]:
        def edit(entry: dict[str, Any]) -> None:
            for choice in entry["choices"]:
                if choice["passed"]:
                    fast_batches = choice["name"] == "openvino-fp32"
                    choice["texts_per_second"] = 1000.0 if fast_batches else 1.0
                    choice["one_text_ms"] = 9.0 if fast_batches else 1.0 if choice["name"] == "fp32" else 5.0
            entry.pop("objective", None)
            if objective is not None:
                entry["objective"] = objective

        return edit

    for objective, picked in ((None, "openvino-fp32"), ("throughput", "openvino-fp32"), ("latency", "fp32")):
        _write_profile(profiles, tiny_tuned, disagree(objective))
        encoder = Encoder(tiny_tuned["folder"])
        assert encoder.choice == picked, objective
        assert f"for {objective or 'throughput'}: the fastest" in encoder.describe()["picked_by"]
    _write_profile(profiles, tiny_tuned, disagree("lowest power"))
    encoder = Encoder(tiny_tuned["folder"])
    assert encoder.choice == "fp32" and "tuned for 'lowest power'" in encoder.describe()["picked_by"]


def test_tune_for_latency_records_it_and_picks_the_least_one_text_time(
    export_dir: Callable[[str], Path], profiles: Path
) -> None:
    folder = export_dir("tiny")
    outcomes, path, pick = tuning.tune(folder, rounds=1, sample=4, profile_dir=profiles, objective="latency")
    entry = json.loads(path.read_text())["entries"][-1]
    assert entry["objective"] == "latency"
    timed = {o.name: o.one_text_ms for o in outcomes if o.passed and o.one_text_ms is not None}
    assert pick.tuned and pick.name == min(timed, key=lambda name: timed[name])
    assert "ms for one short text" in pick.reason
    with pytest.raises(ValueError, match=r"objective='fastest' is not one of throughput, latency"):
        tuning.tune(folder, rounds=1, sample=4, profile_dir=profiles, objective="fastest")
    run = run_cli("tune", folder, "--rounds", "1", "--texts", "4", "--for", "latency", "--json",
                  env={profile.PROFILE_ENV: str(profiles)})  # fmt: skip
    assert run.returncode == 0, run.describe()
    assert json.loads(run.stdout)["objective"] == "latency"


@pytest.mark.fast
def test_io_binding_narrows_the_tuned_pick_to_onnx_runtime(tiny_tuned: dict[str, Any], profiles: Path) -> None:
    """io_binding is an ONNX Runtime option: with it, the fastest ONNX Runtime choice runs, never another backend
    than the options ask for, and picked_by names the faster choice passed over and why."""
    _write_profile(profiles, tiny_tuned, _fastest("openvino-fp32"))
    assert Encoder(tiny_tuned["folder"]).choice == "openvino-fp32"
    bound = Encoder(tiny_tuned["folder"], io_binding=True)
    assert (bound.choice, bound.backend, bound.io_binding) == ("fp32", "onnxruntime", True)
    reason = bound.describe()["picked_by"]
    assert reason.startswith("tuned here on ") and "fits the keywords given" in reason
    assert "openvino-fp32 measured faster (1000.0 texts/s on real text) but was passed over: io_binding is an ONNX " \
        "Runtime feature" in reason  # fmt: skip
    assert Encoder(tiny_tuned["folder"], io_binding=False).choice == "openvino-fp32"
    named = Encoder(tiny_tuned["folder"], backend="onnxruntime").describe()["picked_by"]
    assert "openvino-fp32 measured faster" in named and "backend='onnxruntime' was asked for" in named
    with pytest.raises(ValueError, match="io_binding is an ONNX Runtime feature; backend='openvino' does not use it"):
        Encoder(tiny_tuned["folder"], backend="openvino", io_binding=True)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set ``entry[key]`` (``"choices.*.key"``: that key of every choice) to ``value``."""

    def edit(entry: dict[str, Any]) -> None:
        keys = path.split(".")
        for target in entry["choices"] if keys[0] == "choices" and len(keys) == 3 else [entry]:
            target[keys[-1]] = value

    return edit


@pytest.mark.fast
@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        pytest.param(_set("machine", None), "its 'machine' is None, not an object", id="machine-null"),
        pytest.param(_set("versions", None), "its 'versions' is None, not an object", id="versions-null"),
        pytest.param(_set("choices", None), "its 'choices' is None, not a list", id="choices-null"),
        pytest.param(_set("choices", 5), "its 'choices' is 5, not a list", id="choices-number"),
        pytest.param(_set("created", 7), "its 'created' is 7, not a string", id="created-number"),
        pytest.param(lambda e: e["choices"].append(None), "is None, not a choice with a name", id="choice-null"),
        pytest.param(_set("choices.*.passed", "yes"), "has passed='yes', not true or false", id="passed-string"),
        pytest.param(_set("choices.*.texts_per_second", "fast"), "texts_per_second='fast'", id="speed-string"),
        pytest.param(_set("choices.*.texts_per_second", float("nan")), "texts_per_second=nan", id="speed-nan"),
        pytest.param(_set("choices.*.one_text_ms", True), "one_text_ms=True", id="latency-bool"),
    ],
)
def test_a_malformed_entry_is_ignored_with_a_warning(
    tiny_tuned: dict[str, Any],
    profiles: Path,
    caplog: pytest.LogCaptureFixture,
    edit: Callable[[dict[str, Any]], None],
    problem: str,
) -> None:
    """A damaged or hand-edited entry never crashes Encoder(DIR): it is reported, naming the field, and ignored;
    a well-formed entry beside it still counts, and the next save drops the bad one."""
    _write_profile(profiles, tiny_tuned, edit)
    with caplog.at_level(logging.WARNING, logger="bert_onnx.runtime.profile"):
        encoder = Encoder(tiny_tuned["folder"])
    assert encoder.choice == "fp32" and "no tuned profile for this machine" in encoder.picked_by
    assert any("ignoring entry 0 of the tuned profile" in r.getMessage() and problem in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]  # fmt: skip
    path = profiles / tiny_tuned["path"].name
    body = json.loads(path.read_text())
    good = json.loads(json.dumps(tiny_tuned["body"]["entries"][0]))
    _fastest("openvino-fp32")(good)
    body["entries"].append(good)
    path.write_text(json.dumps(body))
    assert Encoder(tiny_tuned["folder"]).choice == "openvino-fp32"
    manifest = Manifest.read(tiny_tuned["folder"])
    profile.save_entry(manifest, tiny_tuned["folder"], {**good, "machine": {"cpu": "elsewhere"}}, profiles)
    assert len(json.loads(path.read_text())["entries"]) == 2  # the good entry and the new one


SAVER = """
import sys, time
from pathlib import Path
from bert_onnx.manifest import Manifest
from bert_onnx.runtime import profile

folder, profiles, start, tag, count = sys.argv[1:]
manifest = Manifest.read(folder)
while not Path(start).exists():  # every process is imported and waiting: the saves overlap
    time.sleep(0.001)
for i in range(int(count)):
    entry = {"machine": {"process": tag, "i": i}, "versions": {}, "choices": []}
    profile.save_entry(manifest, Path(folder), entry, Path(profiles))
"""


def test_concurrent_saves_keep_every_entry(export_dir: Callable[[str], Path], tmp_path: Path) -> None:
    """Three processes saving at once (as parallel `tune` runs do) keep all of each other's entries."""
    folder, profiles, start = export_dir("tiny"), tmp_path / "profiles", tmp_path / "start"
    count, processes = 30, 3
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SAVER, str(folder), str(profiles), str(start), str(tag), str(count)],
            env=cli_env(),
        )
        for tag in range(processes)
    ]
    time.sleep(2.0)  # let them import; a slow one only overlaps less, never makes the test pass wrongly
    start.touch()
    assert [child.wait(timeout=120) for child in children] == [0] * processes
    entries = profile.read_entries(profile.profile_path(Manifest.read(folder), profiles))
    saved = sorted((e["machine"]["process"], e["machine"]["i"]) for e in entries)
    assert saved == sorted((str(tag), i) for tag in range(processes) for i in range(count))


# -- the CPUs a profile is keyed by --------------------------------------------------------------------------------


@pytest.mark.fast
def test_a_profile_tuned_on_more_cpus_than_this_process_may_use_is_ignored(
    tiny_tuned: dict[str, Any], profiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tuned_on = tiny_tuned["body"]["entries"][0]["machine"]["cpus"]
    if tuned_on < 2:
        pytest.skip(f"this machine lets the tests use {tuned_on} CPU: there are no fewer to be limited to")
    _write_profile(profiles, tiny_tuned, _fastest("openvino-fp32"))
    assert Encoder(tiny_tuned["folder"]).choice == "openvino-fp32"
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0}, raising=False)  # as under `taskset -c 0`
    assert profile.machine_key("cpu", None)["cpus"] == 1
    encoder = Encoder(tiny_tuned["folder"])
    assert encoder.choice == "fp32" and f"cpus {tuned_on}, here 1" in encoder.picked_by


def _cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: str, files: dict[str, str]) -> None:
    """A cgroup tree under ``tmp_path``: ``/proc/self/cgroup`` reading ``listed``, and ``files`` in it."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    (tmp_path / "proc-cgroup").write_text(listed + "\n")
    monkeypatch.setattr(machine, "CGROUP_ROOT", root)
    monkeypatch.setattr(machine, "PROC_CGROUP", tmp_path / "proc-cgroup")
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("listed", "files", "cpus"),
    [
        pytest.param("0::/", {"cpu.max": "max 100000"}, 8, id="v2-no-quota"),
        pytest.param("0::/", {"cpu.max": "150000 100000"}, 2, id="v2-container-1.5-cpus"),
        pytest.param("0::/", {"cpu.max": "1600000 100000"}, 8, id="v2-quota-above-affinity"),
        pytest.param(
            "0::/a/b", {"a/cpu.max": "300000 100000", "a/b/cpu.max": "max 100000"}, 3, id="v2-quota-of-a-parent"
        ),
        pytest.param(
            "4:cpu,cpuacct:/docker/x",
            {"cpu/docker/x/cpu.cfs_quota_us": "200000", "cpu/docker/x/cpu.cfs_period_us": "100000"},
            2,
            id="v1-quota",
        ),
        pytest.param(
            "4:cpu,cpuacct:/docker/x",
            {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
            8,
            id="v1-no-quota",
        ),
        pytest.param("", {}, 8, id="no-cgroup"),
    ],
)
def test_usable_cpus_follow_the_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: str, files: dict[str, str], cpus: int
) -> None:
    _cgroup(tmp_path, monkeypatch, listed, files)
    assert machine.usable_cpus() == cpus == machine.describe()["cpus"] == profile.machine_key("cpu", None)["cpus"]
    assert machine.check_threads(4 * cpus) == 4 * cpus
    with pytest.raises(ValueError, match=rf"threads={4 * cpus + 1} must be an int in \[1, {4 * cpus}\]"):
        machine.check_threads(4 * cpus + 1)


AFFINITY = """
import os
from bert_onnx import machine
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
print(machine.usable_cpus(), os.cpu_count())
"""


@pytest.mark.fast
def test_usable_cpus_follow_the_affinity_mask() -> None:
    """A process pinned to one CPU (as `taskset -c N` pins one) counts one, whatever os.cpu_count() says."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs an affinity mask of at least two CPUs to pin a process to one (Linux)")
    done = subprocess.run([sys.executable, "-c", AFFINITY], capture_output=True, text=True, env=cli_env(), check=True)
    usable, counted = map(int, done.stdout.split())
    assert usable == 1 and counted >= 2


@pytest.mark.fast
def test_tune_checks_threads_before_any_work(export_dir: Callable[[str], Path], profiles: Path) -> None:
    progress: list[str] = []
    with pytest.raises(ValueError, match=r"threads=0 must be an int in \[1, "):
        tuning.tune(export_dir("tiny"), threads=0, profile_dir=profiles, progress=progress.append)
    assert progress == [] and not profiles.exists()
