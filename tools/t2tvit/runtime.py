"""Where and how a tool runs: device, processes, seeds, AMP, and rank-0 logging (console, file, VisualDL)."""
import ctypes
import ctypes.util
import json
import logging
import os
import sys
import time

import numpy as np
import paddle
import paddle.distributed as dist

from . import watchdog
from .errors import StorageError, UserError


def select_device(choice, notes=None, gpu_id=None):
    """Global.device: auto | cpu | gpu. Returns 'cpu' or 'gpu'; a line saying why it is not what was asked goes
    to `notes` (a list). gpu_id: the GPU to use (default: the first of FLAGS_selected_gpus, set per process by
    paddle.distributed.launch)."""
    cuda_build = paddle.is_compiled_with_cuda()
    has_gpu = cuda_build and paddle.device.cuda.device_count() > 0
    if choice == "gpu" and not has_gpu:
        raise UserError("Global.device=gpu but this Paddle sees no GPU (CPU-only wheel or no CUDA device); "
                        "use Global.device=auto or cpu")
    device = "gpu" if choice == "gpu" or (choice == "auto" and has_gpu) else "cpu"
    if choice == "auto" and cuda_build and not has_gpu and notes is not None:
        notes.append(f"Global.device=auto: this Paddle is built with CUDA but sees no GPU (CUDA_VISIBLE_DEVICES="
                     f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}, driver?); training on the CPU")
    if device == "gpu":
        if gpu_id is None:
            gpu_id = int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0])
        paddle.set_device(f"gpu:{gpu_id}")
    else:
        paddle.set_device("cpu")
        keep_freed_memory()
    return device


def keep_freed_memory():
    """Make glibc keep freed memory for reuse instead of returning it to the OS.

    Paddle allocates every CPU tensor with malloc; tensors above 128 KiB are mmap-ed and unmapped again each
    time, and touching the fresh pages costs more than the arithmetic of most ops on them (measured: up to
    2x for elementwise ops, LayerNorm and their gradients at T2T-ViT's sizes). No-op off glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    int_max = 2 ** 31 - 1  # mallopt takes a C int
    return bool(mallopt(m_mmap_max, 0) and mallopt(m_trim_threshold, int_max) and mallopt(m_top_pad, 256 << 20))


class Runtime:
    """Device, rank and world size of this process; init_parallel_env when launched as several."""

    def __init__(self, cfg):
        self.notes = []  # what runs otherwise than the config asks, one line each: the caller logs them
        self.device = select_device(cfg.Global.device, self.notes)
        self.world = dist.get_world_size()
        if self.world > 1:
            if self.device == "cpu" and paddle.is_compiled_with_cuda() and "PADDLE_DISTRI_BACKEND" not in os.environ:
                # init_parallel_env picks NCCL on a CUDA build and moves every process to its GPU: gloo keeps the
                # processes where Global.device put them.
                os.environ["PADDLE_DISTRI_BACKEND"] = "gloo"
                self.notes.append(f"Global.device=cpu on {self.world} processes of a CUDA build of Paddle: they "
                                  "meet over gloo and train on the CPU")
            if cfg.Global.hang_timeout > 0:  # NCCL's process group reads it when it is made (docs/training.md)
                os.environ["PADDLE_PG_TIMEOUT"] = str(int(cfg.Global.hang_timeout * 1000))
            dist.init_parallel_env()
            if self.device == "cpu":
                paddle.set_device("cpu")
        self.rank = dist.get_rank()
        self.is_main = self.rank == 0

    def all_sum(self, values):
        """Sum a list of numbers over all processes (exact for counts)."""
        t = paddle.to_tensor(np.asarray(values, dtype="float64"))
        if self.world > 1:
            dist.all_reduce(t)
        values = t.numpy().tolist()
        watchdog.progress()
        return values


def derived_seed(*parts):
    """A 32-bit seed that is a pure function of its parts (seed, epoch, step, ...), not of history."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class LogFileHandler(logging.FileHandler):
    """A log file whose write errors stop the run (StorageError) instead of printing a traceback per line."""

    def handleError(self, record):
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            raise StorageError(self.baseFilename, err) from None
        super().handleError(record)


def make_logger(name, log_file, is_main, run_id=None):
    """Rank 0 logs INFO to console and file; other ranks only warnings, to the console. With run_id, every
    line reads `TIME [RUN_ID] MESSAGE`, so the lines of runs appending to one file stay attributable."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s " + (f"[{run_id}] " if run_id else "") + "%(message)s",
                            "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    if is_main and log_file:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            handlers.append(LogFileHandler(log_file))
        except OSError as e:
            raise StorageError(e.filename or log_file, e) from None
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    return logger


class Scalars:
    """VisualDL scalars on rank 0 (a no-op elsewhere; where visualdl is missing, `log` is told why)."""

    def __init__(self, logdir, enabled, log):
        self.writer, self.error = None, None
        if enabled:
            try:
                from visualdl import LogWriter
            except ImportError:
                log.warning("visualdl is not installed: no VisualDL scalars (pip install visualdl)")
                return
            try:
                self.writer = LogWriter(logdir=logdir)
                self.path = self.writer.file_name
            except OSError as e:
                raise StorageError(e.filename or logdir, e) from None
            self._catch_write_errors()

    def _catch_write_errors(self):
        """VisualDL writes from a thread that prints and swallows errors: keep the first for the main thread."""
        try:
            records = self.writer._get_file_writer()._async_writer._record_writer
        except AttributeError:  # another VisualDL version: its errors stay its own
            return
        write = records.write

        def checked(data):
            try:
                write(data)
            except OSError as e:
                self.error = self.error or e
                raise

        records.write = checked

    def _check(self):
        if self.error is not None:
            raise StorageError(self.path, self.error)

    def add(self, tag, value, step):
        if self.writer is not None:
            self._check()
            self.writer.add_scalar(tag=tag, value=float(value), step=int(step))

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self._check()


class MetricsFile:
    """log_dir/metrics.jsonl on rank 0: the numbers of every train and val log line, one JSON object a line
    (kind: train | val | best, the time it was written, in seconds since the epoch, and the `run` id of the
    run that wrote it).

    Tools read these instead of the human log (tools/plot_curve.py, the tests). Lines are appended and flushed
    as they come; a resumed run appends too, so an (epoch, step) logged twice counts with its later line.
    A write error stops the run (StorageError) like one of train.log's.
    """

    NAME = "metrics.jsonl"

    def __init__(self, log_dir, enabled, run_id=None):
        self.path = os.path.join(log_dir, self.NAME)
        self.run_id = run_id
        self.file = None
        if enabled:
            try:
                os.makedirs(log_dir, exist_ok=True)
                self.file = open(self.path, "a")
            except OSError as e:
                raise StorageError(self.path, e) from None

    def write(self, **numbers):
        if self.file is None:
            return
        record = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in numbers.items()}
        record["time"] = round(time.time(), 3)
        if self.run_id:
            record["run"] = self.run_id
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:
            raise StorageError(self.path, e) from None

    def close(self):
        if self.file is not None:
            self.file.close()


def read_metrics(path, kind=None):
    """The records of a metrics.jsonl (of one kind: train, val, best), in order."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


def format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Timer:
    def __init__(self):
        self.t = time.perf_counter()

    def lap(self):
        now = time.perf_counter()
        elapsed, self.t = now - self.t, now
        return elapsed
