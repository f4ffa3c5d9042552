"""Two Ray nodes on this machine (ray.cluster_utils.Cluster): actors on both give the single-process results."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import PACKAGE_ROOT

ray = pytest.importorskip("ray", reason="Ray is the [ray] extra, which the test environment installs")

from ray.cluster_utils import Cluster  # noqa: E402

from bert_onnx.export.corpus import documentation_paragraphs  # noqa: E402
from bert_onnx.integrations.ray import RayEmbedder  # noqa: E402


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}})
    cluster.add_node(num_cpus=1, resources={"worker": 1})
    cluster.wait_for_nodes()
    ray.init(
        address=cluster.address,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(PACKAGE_ROOT)}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_actors_on_two_nodes_match_one_process(
    two_nodes: Cluster, export_dir: Callable[[str], Path], encoder: Callable[[str], Any]
) -> None:
    # Two actors of 1 CPU each on two nodes of 1 CPU each: Ray must place one actor on each node.
    assert [n["Resources"]["CPU"] for n in ray.nodes() if n["Alive"]] == [1.0, 1.0]
    paragraphs = list(documentation_paragraphs())[:120]
    rows = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(paragraphs)]).map_batches(
        RayEmbedder,
        fn_constructor_kwargs={"model_dir": str(export_dir("minilm")), "pooling": "mean"},
        concurrency=2,
        num_cpus=1,
        batch_size=20,
        batch_format="numpy",
    )
    out = rows.take_all()
    assert sorted(int(r["id"]) for r in out) == list(range(len(paragraphs)))
    got = np.stack([np.asarray(r["embedding"]) for r in sorted(out, key=lambda r: int(r["id"]))])
    np.testing.assert_allclose(got, encoder("minilm").embed(paragraphs, pooling="mean"), atol=1e-5)
