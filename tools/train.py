"""Train T2T-ViT from a YAML config, on one device or many.

    python tools/train.py -c config/t2t_vit_7.yaml [-o Section.key=value ...]
    python -m paddle.distributed.launch --devices 0,1,2,3 tools/train.py -c config/t2t_vit_7.yaml

The config states the global batch; per-device batch x devices x accumulation steps always equals it, and
every random draw (data order, augmentation, mixup, drop path) is a function of (seed, epoch, step, and the
position of the micro-batch in the global batch). So 1, 4 or 8 devices follow the same recipe, and a run
resumed from any checkpoint continues exactly as if it had never stopped. It resumes only under its own config
(--accept-changes continues it under a changed one, recording each change); a finished run is not trained again.
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
from t2tvit.preempt import hold_signals

# run as a command: a signal while Paddle loads waits for our handler (GracefulStop.install), which stops at once
if __name__ == "__main__":
    hold_signals()
import argparse
import logging
import os
import shlex
import sys

import paddle
import paddle.distributed as dist

from t2tvit import watchdog
from t2tvit.amp import AmpPlan, MasterWeights
from t2tvit.batch_augment import BatchAugment
from t2tvit.checkpoint import CheckpointDir, RunComplete, load_weights
from t2tvit.config import add_config_args, config_from_args
from t2tvit.dataset import build_loader, class_names
from t2tvit.ema import ModelEMA, short_run_note
from t2tvit.engine import Trainer, batch_plan
from t2tvit.errors import StorageError, UserError, cli
from t2tvit.optim import build_optimizer
from t2tvit.preempt import GracefulStop, Stopped, launch_argv, signal_name
from t2tvit.quiet import add_verbose_flag
from t2tvit.runlock import RunLock, this_run_id
from t2tvit.runtime import MetricsFile, Runtime, Scalars, make_logger
from t2tvit.scheduler import WarmupCosineLR
from t2tvit.shared_dir import resume_point
from t2tvit.t2t import create_model


def build_trainer(cfg, stop, run_id, accept_changes=False):
    """Every part of a run, from the config, in the order that makes it reproducible; resumed or fine-tuned."""
    g = cfg.Global
    rt = Runtime(cfg)
    watchdog.start(g.hang_timeout)  # from here on, a process that makes no progress ends itself
    # What this run continues, decided before anything is written: a refused or finished run leaves every file
    # as it was (RunComplete). Warnings about skipped checkpoints wait for the log. Rank 0 decides, every rank
    # checks that it sees the same folder and loads the same file (shared_dir.py).
    ckpts = CheckpointDir(g.output_dir, g.keep_last)
    skipped, names = [], class_names(cfg)
    path, state = resume_point(rt, ckpts, run_id, lambda: ckpts.resume_from(g.resume, skipped.append, cfg.to_dict(),
                                                                             names, accept_changes))
    log = make_logger("train", os.path.join(g.log_dir, "train.log"), rt.is_main, run_id=run_id)
    scalars = Scalars(g.log_dir, rt.is_main, log)
    metrics = MetricsFile(g.log_dir, rt.is_main, run_id=run_id)
    batch, accum = batch_plan(cfg.Data.global_batch_size, cfg.Data.batch_size, rt.world)
    log.info(f"config:\n{cfg.dump()}")
    plan = AmpPlan.resolve(g.amp, g.amp_level, rt.device)
    for note in rt.notes + plan.notes:  # what runs otherwise than the config asks, one line each
        log.warning(note)
    log.info(f"global batch {cfg.Data.global_batch_size} = {batch} per device x {rt.world} "
             f"device(s) x {accum} accumulation step(s), on {rt.device}")
    train_loader, sampler = build_loader(cfg, "train", batch, rt.world, rt.rank, accum)
    val_loader, _ = build_loader(cfg, "val", batch, rt.world, rt.rank)
    paddle.seed(g.seed)
    model = create_model(g.model, img_size=g.img_size, num_classes=g.num_classes, drop_rate=cfg.Model.drop_rate,
                         attn_drop_rate=cfg.Model.attn_drop_rate, drop_path_rate=cfg.Model.drop_path_rate)
    for warning in skipped:
        log.warning(warning)
    model.set_grad_checkpointing(g.grad_checkpointing)
    if path is None and g.pretrained:  # into the float32 model, before AMP O2 makes its weights half precision
        which, notes = load_weights(model, g.pretrained, drop_head=True, new_head=g.reset_head)
        log.info(f"fine-tuning from {g.pretrained} ({which}); " + "; ".join(notes))
    model, opt = plan.decorate(model, build_optimizer(model, cfg))
    ema = ModelEMA(model, cfg.EMA.decay) if cfg.EMA.enable else None
    if ema and plan.level == "O2":  # the float32 weights, not their half-precision copies
        ema.set_state_dict(MasterWeights(model, opt).state_dict())
    short = ema and short_run_note(cfg.EMA.decay, g.epochs * sampler.steps_per_epoch, cfg.EMA.best)
    if short:
        log.info(short)
    if rt.is_main:  # holding the folder's lock: no live run owns them
        ckpts.remove_stale_temporaries()
    trainer = Trainer(cfg, rt, model, opt, WarmupCosineLR.from_config(cfg, sampler.steps_per_epoch), train_loader,
                      sampler, val_loader, accum, BatchAugment.from_config(cfg), ckpts, log, scalars, metrics,
                      names, ema=ema, scaler=plan.loss_scale(), autocast=plan.autocast, stop=stop, run_id=run_id)
    if path is not None:
        trainer.restore(path, state)
    return trainer


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_verbose_flag(ap)
    add_config_args(ap)
    ap.add_argument("--resume", default=None, help="checkpoint to resume from (overrides Global.resume)")
    ap.add_argument("--accept-changes", action="store_true",
                    help="continue a run whose checkpoint holds another config under this one (each change is "
                         "logged to train.log and metrics.jsonl); the model, sizes, global batch and class names "
                         "never change within a run")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    if args.resume is not None:
        cfg.Global.resume = args.resume
    log = logging.getLogger("train")
    stop = GracefulStop().install(log)  # after `import paddle`, whose own SIGTERM handler this replaces
    run_id = this_run_id()
    # Rank 0 writes the output folder, so it alone takes its lock, before anything is written or the ranks
    # meet: a refusal exits it with 2, which makes paddle.distributed.launch end the other ranks.
    lock = RunLock(cfg.Global.output_dir, run_id, shlex.join(launch_argv()))
    stop.on_exit_now(lock.release)  # before it is taken: a signal while starting ends the process at once
    if dist.get_rank() == 0:
        lock.acquire(warn=print)
    try:
        trainer = build_trainer(cfg, stop, run_id, args.accept_changes)
        stop.started()
        trainer.run()
    except RunComplete as done:  # exit 0: `train.sh && val.sh` evaluates the finished run
        print(done, flush=True)
        return 0
    except Stopped as e:
        if not e.logged:  # a second signal before training started
            log.warning(f"stopped at once by a second {signal_name(e.signum)} while starting: nothing was trained")
        return e.exit_code
    except StorageError as e:
        raise UserError(f"{e}; newest complete checkpoint: {CheckpointDir(cfg.Global.output_dir).newest()}")
    finally:
        watchdog.stop()
        stop.exiting()  # however the run ends, its data loader workers end with it
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
