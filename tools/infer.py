"""Classify images with an exported inference model (tools/export_model.py) through Paddle Inference.

    python tools/infer.py IMAGE [IMAGE ...] --inference-dir DIR [-c CONFIG] [--device cpu|gpu]
                          [--threads N] [--backend onednn|paddle] [--trt fp32|fp16] [--topk 5]

The config gives the preprocessing (Data.*) and class names, as for tools/predict.py; its img_size must be
the exported one. CPU runs use oneDNN with --threads math threads (default: all cores of this process);
GPU runs use CUDA, through TensorRT with --trt. Predictor(DIR) is the API for other tools.
"""
import cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import os
import sys

import numpy as np
import yaml

from errors import UserError, cli
from runtime import keep_freed_memory

PREFIX = "inference"
MODEL_FILES = (PREFIX + ".json", PREFIX + ".pdmodel")  # Paddle 3.x (PIR) writes .json, 2.6 .pdmodel
PARAMS_FILE = PREFIX + ".pdiparams"
META_FILE = PREFIX + ".yml"  # what the graph takes: model name, input name, img_size, num_classes
# Fuses attention into one oneDNN kernel compiled for AVX-512; on AVX2-only CPUs it dies with SIGILL.
AVX512_ONLY_PASSES = ("self_attention_fuse_pass",)


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def default_threads():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_files(model_dir):
    """(model file, params file, meta dict) of an exported model in model_dir."""
    if not os.path.isdir(model_dir):
        raise UserError(f"inference model directory not found: {model_dir}")
    params, meta = os.path.join(model_dir, PARAMS_FILE), os.path.join(model_dir, META_FILE)
    for name in MODEL_FILES:
        path = os.path.join(model_dir, name)
        if os.path.isfile(path) and os.path.isfile(params) and os.path.isfile(meta):
            with open(meta) as f:
                return path, params, yaml.safe_load(f)
    raise UserError(f"{model_dir} holds no exported model ({' or '.join(MODEL_FILES)}, {PARAMS_FILE} and "
                    f"{META_FILE}); write one with tools/export_model.py")


def reuse_memory(config, model_file):
    """Let intermediate tensors share memory (a third of the peak on CPU); the pass exists for Paddle 2.6's
    program format only: Paddle 3.3 fails to create the predictor with it on a PIR (.json) model."""
    if model_file.endswith(".pdmodel"):
        config.enable_memory_optim()


def cpu_config(model_file, params_file, threads=None, backend="onednn"):
    """A paddle.inference.Config running on CPU with oneDNN ('onednn') or Paddle's own kernels ('paddle')."""
    import paddle.inference as pi

    keep_freed_memory()
    # Config(model_file, params_file): Paddle 2.6 misreads a single path prefix.
    config = pi.Config(model_file, params_file)
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads or default_threads())
    if backend == "onednn":
        config.enable_mkldnn()
        config.set_mkldnn_cache_capacity(16)  # oneDNN caches kernels per input shape
        if "avx512f" not in cpu_flags():
            for name in AVX512_ONLY_PASSES:
                config.delete_pass(name)
    elif backend == "paddle":
        config.disable_mkldnn()
    else:
        raise UserError(f"unknown CPU backend {backend!r}; use onednn or paddle")
    reuse_memory(config, model_file)
    config.disable_glog_info()
    return config


def gpu_config(model_file, params_file, trt=None, trt_input=None, max_batch=64, gpu_id=0):
    """A paddle.inference.Config on GPU `gpu_id`; trt 'fp32' or 'fp16' runs it through TensorRT, for inputs
    trt_input = (name, shape without the batch) and batches up to max_batch."""
    import paddle.inference as pi

    config = pi.Config(model_file, params_file)
    config.enable_use_gpu(256, gpu_id)
    reuse_memory(config, model_file)
    if trt:
        if trt not in ("fp32", "fp16"):
            raise UserError(f"--trt {trt!r}: use fp32 or fp16")
        mode = pi.PrecisionType.Half if trt == "fp16" else pi.PrecisionType.Float32
        config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=max_batch, min_subgraph_size=3,
                                      precision_mode=mode, use_static=False, use_calib_mode=False)
        name, shape = trt_input
        config.set_trt_dynamic_shape_info({name: [1] + shape}, {name: [max_batch] + shape},
                                          {name: [max_batch] + shape})
    config.disable_glog_info()
    return config


class Predictor:
    """An exported T2T-ViT in Paddle Inference: `predictor(images)` maps [N, 3, S, S] float32 to logits.

    device: 'cpu' or 'gpu'. CPU: backend 'onednn' (fast path) or 'paddle' (Paddle's own kernels), `threads`
    math threads. GPU: trt None, 'fp32' or 'fp16' (TensorRT, engines built for batches up to max_batch).
    """

    def __init__(self, model_dir, device="cpu", threads=None, backend="onednn", trt=None, max_batch=64,
                 gpu_id=0):
        import paddle.inference as pi

        model_file, params_file, meta = model_files(model_dir)
        self.img_size = int(meta["img_size"])
        if device == "gpu":
            trt_input = (meta["input"], [3, self.img_size, self.img_size])
            config = gpu_config(model_file, params_file, trt, trt_input, max_batch, gpu_id)
        else:
            config = cpu_config(model_file, params_file, threads, backend)
        self.predictor = pi.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def check_img_size(self, img_size):
        if self.img_size != img_size:
            raise UserError(f"the exported model takes {self.img_size} px images but the config says "
                            f"Global.img_size={img_size}: pass the config it was exported with")

    def __call__(self, images):
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, self.img_size, self.img_size):
            raise UserError(f"the exported model takes [N, 3, {self.img_size}, {self.img_size}] images, "
                            f"got {list(images.shape)}")
        self.input.reshape(list(images.shape))
        self.input.copy_from_cpu(images)
        self.predictor.run()
        return self.output.copy_to_cpu()


@cli
def main(argv=None):
    from config import add_config_args, config_from_args
    from dataset import build_transform, class_names
    from predict import load_images, print_predictions

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", help="image files")
    ap.add_argument("--inference-dir", required=True, help="directory written by tools/export_model.py")
    add_config_args(ap, default_config="config/t2t_vit_7_demo.yaml")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU math threads (default: all cores)")
    ap.add_argument("--backend", choices=("onednn", "paddle"), default="onednn", help="CPU kernels")
    ap.add_argument("--trt", choices=("fp32", "fp16"), default=None, help="GPU: run through TensorRT")
    ap.add_argument("--topk", type=int, default=5)
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    predictor = Predictor(args.inference_dir, args.device, args.threads, args.backend, args.trt)
    predictor.check_img_size(cfg.Global.img_size)
    logits = predictor(load_images(args.images, build_transform(cfg, "val")))
    print_predictions(args.images, logits, class_names(cfg), args.topk)


if __name__ == "__main__":
    sys.exit(main())
