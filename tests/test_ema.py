import numpy as np
import paddle
import pytest

from t2tvit.ema import ModelEMA, best_source


class Tiny(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(3, 2)
        self.frozen = self.create_parameter([2])
        self.frozen.stop_gradient = True
        self.register_buffer("steps", paddle.to_tensor([0], dtype="int64"))
        self.register_buffer("scale", paddle.ones([2]))

    def forward(self, x):
        return self.fc(x) * self.scale + self.frozen


def shift(model, value):
    with paddle.no_grad():
        for p in (model.fc.weight, model.fc.bias, model.frozen, model.scale):
            p.set_value(p + value)
        model.steps.set_value(model.steps + 1)


def test_update_arithmetic():
    paddle.seed(0)
    model = Tiny()
    ema = ModelEMA(model, decay=0.9)
    w0 = model.fc.weight.numpy().copy()
    shift(model, 1.0)
    ema.update(model)
    np.testing.assert_allclose(ema.module.fc.weight.numpy(), 0.9 * w0 + 0.1 * (w0 + 1), rtol=1e-6)
    shift(model, 1.0)
    ema.update(model)
    expected = 0.9 * (0.9 * w0 + 0.1 * (w0 + 1)) + 0.1 * (w0 + 2)
    np.testing.assert_allclose(ema.module.fc.weight.numpy(), expected, rtol=1e-6)


def test_frozen_parameters_and_buffers_are_copied():
    paddle.seed(0)
    model = Tiny()
    ema = ModelEMA(model, decay=0.9)
    shift(model, 5.0)
    ema.update(model)
    np.testing.assert_array_equal(ema.module.frozen.numpy(), model.frozen.numpy())
    np.testing.assert_array_equal(ema.module.scale.numpy(), model.scale.numpy())
    assert ema.module.steps.numpy().tolist() == [1] and ema.module.steps.dtype == paddle.int64


def test_module_is_independent_and_inert():
    paddle.seed(0)
    model = Tiny()
    ema = ModelEMA(model, decay=0.5)
    assert not ema.module.training
    assert all(p.stop_gradient for p in ema.module.parameters())
    own = {id(p) for p in ema.module.parameters()}
    assert not own & {id(p) for p in model.parameters()}
    before = ema.module.fc.weight.numpy().copy()
    shift(model, 1.0)  # changing the model does not touch the copy until update()
    np.testing.assert_array_equal(ema.module.fc.weight.numpy(), before)
    x = paddle.ones([4, 3])
    loss = model(x).sum() + ema.module(x).sum()
    loss.backward()
    assert model.fc.weight.grad is not None and ema.module.fc.weight.grad is None


def test_state_dict_round_trip():
    paddle.seed(0)
    model = Tiny()
    ema = ModelEMA(model, decay=0.5)
    shift(model, 3.0)
    ema.update(model)
    other = ModelEMA(Tiny(), decay=0.5)
    other.set_state_dict(ema.state_dict())
    np.testing.assert_array_equal(other.module.fc.weight.numpy(), ema.module.fc.weight.numpy())


@pytest.mark.parametrize("choice, expected", [("ema", "ema"), ("model", "model"), ("either", "model")])
def test_best_checkpoint_source_is_ema_by_default_and_a_choice(choice, expected):
    results = {"model": (0.6, 0.9), "ema": (0.5, 0.8)}
    assert best_source(results, choice) == expected
    assert best_source({"model": (0.6, 0.9), "ema": (0.7, 0.9)}, "either") == "ema"
    assert best_source({"model": (0.6, 0.9)}, choice) == "model"  # EMA off: only the model exists
