"""Third-party messages that are not about the user's run, kept off every command's output (-v shows them).

Each filter names one known message; nothing is hidden by category or by library, so a warning that does
concern the run (Paddle's AMP falling back from bf16, a UserWarning of ours) always reaches the user. What is
filtered, and where it comes from:
- Python warnings (install()): Paddle's "No ccache found" (a note for compiling C++ extensions, which nothing
  here does) and "Skip loading for KEY" (set_state_dict on a key that checkpoint.match_state_dict left out on
  purpose after checking every name and shape, and reported in its own words: the head re-made, the position
  table regenerated).
- Lines written straight to the process's stdout / stderr, by C++ or by print (filtered_output()): Paddle's
  OMP_NUM_THREADS note at `import paddle` (cpu_env sets the thread count on purpose), its glog lines while a
  model is traced and first run (PIR "not support input out tensor", "New Executor is Running"), paddle2onnx's
  progress lines, ONNX Runtime's graph clean-up warnings, NNCF's progress bars and INFO lines.

install() runs when t2tvit.cpu_env is imported, first thing in every command, so `python tools/X.py` and
scripts/launch.sh behave alike; `-v` / `--verbose` on the command line (every command has it) leaves all of
it shown.
"""
import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import threading
import warnings

VERBOSE_FLAGS = ("-v", "--verbose")

WARNING_MESSAGES = (r"No ccache found", r"Skip loading for ")

# Whole lines (bytes, searched anywhere in the line) written by third-party code to fd 1 or 2.
IMPORT_NOISE = (rb"^WARNING: OMP_NUM_THREADS set to \d+, not 1\. ", rb"^PLEASE USE OMP_NUM_THREADS WISELY\.")
EXPORT_NOISE = (
    rb"^[WI]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ",            # glog INFO/WARNING lines of Paddle's C++ (not errors)
    rb"^\[Paddle2ONNX\] ",                                # paddle2onnx's progress
    rb"^[\d-]+ [\d:]+ \[INFO\]\s",                        # paddle2onnx's Python logger ("ONNX model saved in")
    rb"\[W:onnxruntime:",                                 # ONNX Runtime's graph clean-up warnings
    rb"^INFO:nncf:",                                      # NNCF's INFO lines
    "\u2501".encode(),                                    # NNCF's progress bars (rich's heavy rule)
    rb"^\s*\d+ \w+\.\d+\s*$",                             # NNCF's list of ignored nodes, one per line
    rb"^\s*$",                                            # the blank lines NNCF leaves between them
)

_state = {"verbose": False, "filters": []}


def verbose_asked(argv=None):
    """Whether the command line asks for -v / --verbose (read before argparse runs: Paddle prints its note while
    the command's imports run)."""
    return any(a in VERBOSE_FLAGS for a in (sys.argv[1:] if argv is None else argv))


def add_verbose_flag(parser):
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show third-party warnings and notes that are not about this run")
    return parser


def install(verbose=None):
    """The warning filters and the quiet `import paddle`, unless -v: called by t2tvit.cpu_env."""
    set_verbose(verbose_asked() if verbose is None else verbose)
    if not _state["verbose"] and "paddle" not in sys.modules and not any(
            isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("paddle", IMPORT_NOISE))


def set_verbose(verbose):
    """-v given (True): drop this module's warning filters and stop filtering output; False: filter."""
    _state["verbose"] = bool(verbose)
    for f in _state["filters"]:
        if f in warnings.filters:
            warnings.filters.remove(f)
    _state["filters"] = []
    if not verbose:
        for message in WARNING_MESSAGES:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
            _state["filters"].append(warnings.filters[0])
    getattr(warnings, "_filters_mutated", lambda: None)()  # the list was edited in place: drop cached lookups


def is_verbose():
    return _state["verbose"]


def _pump(source, target, noise):
    """Copy lines from fd `source` to fd `target`, dropping those that match a pattern of `noise`."""
    pattern = re.compile(b"|".join(b"(?:" + n + b")" for n in noise))
    pending = b""
    while True:
        chunk = os.read(source, 1 << 16)
        if not chunk:
            break
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        kept = b"".join(line + b"\n" for line in lines if not pattern.search(line.replace(b"\r", b"")))
        if kept:
            os.write(target, kept)
    if pending and not pattern.search(pending):
        os.write(target, pending)
    os.close(source)


def _flush_c_stdio():
    try:
        import ctypes
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def filtered_output(noise=EXPORT_NOISE, fds=(1, 2)):
    """Within the block, lines that code of any language writes to fds 1 and 2 and that match `noise` are
    dropped; everything else passes through, in order per stream. Nothing is filtered under -v. No process
    started within the block may outlive it (it would hold the pipe open)."""
    if _state["verbose"]:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _flush_c_stdio()
    saved, pumps = [], []
    try:
        for fd in fds:
            read_end, write_end = os.pipe()
            saved.append((fd, os.dup(fd)))
            os.dup2(write_end, fd)
            os.close(write_end)
            pump = threading.Thread(target=_pump, args=(read_end, saved[-1][1], noise), daemon=True)
            pump.start()
            pumps.append(pump)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        _flush_c_stdio()
        for fd, original in saved:
            os.dup2(original, fd)  # closes the pipe's last write end: its pump reads to the end and stops
        for pump in pumps:
            pump.join()
        for _, original in saved:
            os.close(original)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Imports module `name` (once, the first time) with filtered_output(noise) around its execution."""

    def __init__(self, name, noise):
        self.name, self.noise = name, noise

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module
        noise = self.noise

        def exec_module(module):
            with filtered_output(noise, fds=(2,)):
                run(module)

        spec.loader.exec_module = exec_module
        return spec
