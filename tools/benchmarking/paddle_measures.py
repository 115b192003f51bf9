"""Paddle's measures: the dynamic graph's eval and training step, and the exported model in a deployment backend."""
import os

import numpy as np

from .sessions import time_session
from .settings import config_of, random_batch, soft_targets, timed
from .timing import time_eval, time_model_eval


def start_paddle(args):
    import paddle

    from t2tvit.runtime import select_device
    select_device(args.device)
    paddle.seed(0)
    return paddle


def new_paddle_model(args, paddle, **kwargs):
    from t2tvit.t2t import create_model
    return create_model(args.model, img_size=args.img_size, num_classes=config_of(args).Global.num_classes,
                        **kwargs)


def shared_paddle_model(args, paddle, **kwargs):
    """The model with the weights every measure shares (written by prepare)."""
    model = new_paddle_model(args, paddle, **kwargs)
    from t2tvit.checkpoint import load_file
    model.set_state_dict(load_file(os.path.join(args.work_dir, "weights.pdparams")))
    return model


def measure_eval_dynamic(args):
    paddle = start_paddle(args)
    model = shared_paddle_model(args, paddle)
    model.eval()
    return time_model_eval(args, model, paddle.no_grad, paddle.to_tensor)


def measure_engine(args):
    from t2tvit.deploy import create_predictor
    predictor = create_predictor(os.path.join(args.work_dir, "inference"), backend=args.engine_backend,
                                 precision=args.precision, threads=args.threads, device=args.device)
    # The OpenVINO and ONNX Runtime predictors say their session's settings, to set beside the plain rows'.
    session = {"openvino": "compiled", "onnxruntime": "session"}.get(predictor.backend)
    if session:
        return time_session(args, predictor, getattr(predictor, session))
    return time_eval(args, lambda images: images, predictor)


def measure_train(args):
    paddle = start_paddle(args)
    from t2tvit.mixup import soft_target_cross_entropy
    from t2tvit.optim import build_optimizer
    cfg = config_of(args)
    model = shared_paddle_model(args, paddle, drop_path_rate=cfg.Model.drop_path_rate)
    model.set_grad_checkpointing(cfg.Global.grad_checkpointing)  # -o Global.grad_checkpointing=true
    model.train()
    opt = build_optimizer(model, cfg)
    x = paddle.to_tensor(random_batch(args))
    targets = paddle.to_tensor(soft_targets(np.random.RandomState(1), args.batch, cfg.Global.num_classes))

    def step():
        loss = soft_target_cross_entropy(model(x), targets)
        loss.backward()
        opt.step()
        opt.clear_grad()
        float(loss)

    return timed(step, args.warmup, args.repeat)
