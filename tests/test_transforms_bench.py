"""``recipes/benchmark_transforms.py`` runs (a smoke test; no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch


def test_benchmark_recipe_runs_small(tmp_path) -> None:
    """``recipes/benchmark_transforms.py`` end to end on a tiny batch (figures not checked)."""
    path = Path(__file__).resolve().parents[1] / "recipes" / "benchmark_transforms.py"
    spec = importlib.util.spec_from_file_location("benchmark_transforms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = torch.get_num_threads()
    try:
        out = tmp_path / "b.json"
        result = module.main(["--batch", "2", "--size", "48", "--rounds", "1", "--out", str(out)])
        assert set(result["compare"]) == {"ColorJitter", "GaussianBlur"}
        assert json.loads(out.read_text())["compare"]["GaussianBlur"]["kornia_over_ours"] > 0
        costs = module.main(["--costs", "--batch", "2", "--size", "48", "--out", str(out)])
        assert len(costs["costs"]) == 16
        args = ["--pillow", "--batch", "2", "--size", "48", "--rounds", "1", "--out", str(out)]
        pil = module.main(args)["pillow"]
        assert set(pil) == {"crop-bicubic", "crop-bilinear", "gaussian-blur"}
        assert all(row["pillow_over_ours"] > 0 for row in pil.values())
    finally:
        torch.set_num_threads(before)
