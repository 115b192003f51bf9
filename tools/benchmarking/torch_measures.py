"""PyTorch's measures: the official model (tools/torch_reference.py) in eval and its training step, the yardsticks.

torch is imported inside these functions only: a Paddle worker never loads it, nor a torch worker Paddle.
"""
import os

import numpy as np

from .settings import config_of, random_batch, soft_targets, timed
from .timing import time_model_eval


def shared_torch_model(args, **kwargs):
    import torch

    from torch_reference import create_reference, load_torch_layout
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_reference(args.model, img_size=args.img_size, num_classes=config_of(args).Global.num_classes,
                             **kwargs)
    return torch, load_torch_layout(model, np.load(os.path.join(args.work_dir, "weights_torch_layout.npz")))


def measure_torch_eval(args):
    torch, model = shared_torch_model(args)
    model.eval()
    return time_model_eval(args, model, torch.no_grad, torch.from_numpy)


def measure_torch_train(args):
    cfg = config_of(args)
    torch, model = shared_torch_model(args, drop_path_rate=cfg.Model.drop_path_rate)
    model.train()
    # The recipe's AdamW: no weight decay on 1-D parameters, cls_token and pos_embed (frozen tensors excluded).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in ("cls_token", "pos_embed") else decay).append(p)
    o = cfg.Optimizer
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay,
                             "weight_decay": 0.0}], lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    x = torch.from_numpy(random_batch(args))
    targets = torch.from_numpy(soft_targets(np.random.RandomState(1), args.batch, cfg.Global.num_classes))

    def step():
        loss = torch.sum(-targets * torch.log_softmax(model(x), dim=-1), dim=-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        float(loss)

    return timed(step, args.warmup, args.repeat)
