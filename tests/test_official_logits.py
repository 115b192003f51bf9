"""End to end: the official checkpoint, converted and run by predict.py on real photos, gives the logits that the
official pipeline gives in PyTorch (its eval transform written out in reference_pipeline.py, the official model in
tools/torch_reference.py, itself proven against tests/data/official): pixels, normalisation, weights and model.
"""
import json
import os

import numpy as np
import pytest

from reference_pipeline import reference_eval, reference_normalize
from runner import LIT_DATA, ROOT, official_weights, run_tool

torch = pytest.importorskip("torch", reason="torch is not installed (requirements-test.txt installs it)")

TOL = 1e-5


def official_logits(paths):
    from torch_reference import create_reference, load_torch_layout

    model = load_torch_layout(create_reference("t2t_vit_7"), official_weights())
    model.eval()
    x = np.stack([reference_normalize(reference_eval(p, 224)) for p in paths])
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.slow
def test_predict_logits_on_real_photos_are_the_official_pipelines_within_1e_5(tmp_path, official_checkpoint):
    weights = tmp_path / "t2t_vit_7.pdparams"
    r = run_tool("convert_weights.py", "--src", official_checkpoint, "--dst", weights,
                 "--model", "t2t_vit_7", config=None)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "logits.jsonl"
    r = run_tool("predict.py", os.path.join(LIT_DATA, "val"), "--weights", weights, "--output", out, "--logits",
                 "--batch-size", "8", "-o", "Global.device=cpu", config=os.path.join(ROOT, "config", "t2t_vit_7.yaml"))
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 20
    ours = np.array([rec["logits"] for rec in records], np.float32)
    expected = official_logits([rec["path"] for rec in records])
    assert ours.shape == expected.shape == (20, 1000)
    print(f"max |diff| {np.abs(ours - expected).max():.2e}, logits std {expected.std():.3f}")
    assert np.abs(ours - expected).max() <= TOL
