"""The PyTorch T2T-ViT that tools/benchmark.py measures against computes the official logits."""
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "..", "shared", "fixtures", "t2t_vit_7")
PARITY_TOL = 1e-5  # a faithful float32 port lands ~1e-6 from the reference

torch = pytest.importorskip("torch", reason="torch is not installed (requirements-test.txt installs it)")
pytestmark = pytest.mark.skipif(not os.path.isdir(FIX), reason=f"no reference fixtures at {FIX}")


def test_logits_and_intermediates_match_the_official_code():
    from t2tvit.torch_reference import create_reference, load_torch_layout
    model = load_torch_layout(create_reference("t2t_vit_7"), np.load(os.path.join(FIX, "state_dict_torch_layout.npz")))
    model.eval()
    ref = np.load(os.path.join(FIX, "intermediates.npz"))
    modules = dict(model.named_modules())
    seen = {}
    for name in ref.files:
        modules[name].register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out.detach().numpy()))
    with torch.no_grad():
        logits = model(torch.from_numpy(np.load(os.path.join(FIX, "input.npy")))).numpy()
    for name in ref.files:
        assert seen[name].shape == ref[name].shape, name
        assert np.abs(seen[name] - ref[name]).max() <= PARITY_TOL, name
    assert np.abs(logits - np.load(os.path.join(FIX, "logits.npy"))).max() <= PARITY_TOL


def test_parameter_count_and_frozen_tensors_are_the_official_ones():
    from t2tvit.torch_reference import create_reference
    model = create_reference("t2t_vit_7")
    assert sum(p.numel() for p in model.parameters()) == 4310222
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4255694
