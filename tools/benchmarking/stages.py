"""Per-stage profile (--stages): where the time goes, Paddle and PyTorch side by side."""
import numpy as np

from .paddle_measures import shared_paddle_model, start_paddle
from .settings import timed
from .torch_measures import shared_torch_model


def stage_inputs(args):
    """(stage name, input shape, whether the real model needs the input's gradient) in forward order."""
    from t2tvit.t2t import VARIANTS
    _, dim, depth, _, _ = VARIANTS[args.model]
    b, s = args.batch, args.img_size
    return [("soft split 1 (unfold 7x7 /4)", [b, 3, s, s], False),
            ("T2T Performer 1", [b, (s // 4) ** 2, 3 * 49], False),
            ("soft split 2 (unfold 3x3 /2)", [b, (s // 4) ** 2, 64], True),
            ("T2T Performer 2", [b, (s // 8) ** 2, 64 * 9], True),
            ("soft split 3 + project", [b, (s // 8) ** 2, 64], True),
            (f"{depth} backbone blocks", [b, (s // 16) ** 2 + 1, dim], True),
            ("norm + head", [b, (s // 16) ** 2 + 1, dim], True),
            ("whole model", [b, 3, s, s], False)]


def time_stages(args, stages, to_input, run_eval, run_train, set_mode):
    """{stage: [seconds of the eval forward, seconds of forward + backward in training mode]}."""
    rng = np.random.RandomState(0)
    result = {}
    for (name, shape, needs_grad), fn in zip(stage_inputs(args), stages):
        x = to_input(rng.standard_normal(shape).astype("float32"), needs_grad)
        set_mode(False)
        forward = float(np.median(timed(lambda: run_eval(fn, x), args.warmup, args.repeat)))
        set_mode(True)
        both = float(np.median(timed(lambda: run_train(fn, x), args.warmup, args.repeat)))
        result[name] = [forward, both]
    return result


def measure_stages_paddle(args):
    paddle = start_paddle(args)
    import paddle.nn.functional as F
    model = shared_paddle_model(args, paddle, drop_path_rate=0.1)
    t2t = model.tokens_to_token
    grids = t2t.grids  # the token grids after the first and the second soft split

    def blocks(x):
        for blk in model.blocks:
            x = blk(x)
        return x

    stages = [lambda x: F.unfold(x, [7, 7], strides=4, paddings=2).transpose([0, 2, 1]), t2t.attention1,
              lambda x: F.unfold(t2t._reshape_to_image(x, grids[0]), [3, 3], strides=2, paddings=1).transpose([0, 2, 1]),
              t2t.attention2,
              lambda x: t2t.project(F.unfold(t2t._reshape_to_image(x, grids[1]), [3, 3], strides=2,
                                             paddings=1).transpose([0, 2, 1])),
              blocks, lambda x: model.head(model.norm(x)[:, 0]), model]

    def run_eval(fn, x):
        with paddle.no_grad():
            fn(x).numpy()

    def run_train(fn, x):
        y = fn(x)
        if not y.stop_gradient:  # the first soft split has nothing to differentiate
            y.sum().backward()

    # Paddle 2.6's Layer.train() takes no argument: train() / eval().
    return time_stages(args, stages, lambda a, g: paddle.to_tensor(a, stop_gradient=not g), run_eval, run_train,
                       lambda training: model.train() if training else model.eval())


def measure_stages_torch(args):
    torch, model = shared_torch_model(args, drop_path_rate=0.1)
    t2t = model.tokens_to_token

    def blocks(x):
        for blk in model.blocks:
            x = blk(x)
        return x

    stages = [lambda x: t2t.soft_split0(x).transpose(1, 2), t2t.attention1,
              lambda x: t2t.soft_split1(t2t.to_image(x, t2t.grids[0])).transpose(1, 2), t2t.attention2,
              lambda x: t2t.project(t2t.soft_split2(t2t.to_image(x, t2t.grids[1])).transpose(1, 2)),
              blocks, lambda x: model.head(model.norm(x)[:, 0]), model]

    def run_eval(fn, x):
        with torch.no_grad():
            fn(x).numpy()

    def run_train(fn, x):
        y = fn(x)
        if y.requires_grad:
            y.sum().backward()

    return time_stages(args, stages, lambda a, g: torch.from_numpy(a).requires_grad_(g), run_eval, run_train,
                       model.train)
