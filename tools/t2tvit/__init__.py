"""The T2T-ViT library behind the commands in tools/: model, data, training parts, checkpoints, deployment.

The commands (tools/train.py, val.py, predict.py, ...) only parse arguments and call into this package; the
package never imports a command. Importing the package loads no Paddle, so a command can set up the CPU
environment before Paddle is imported (t2tvit.cpu_env, every command's first import; the Python API below sets it
up too, on first use).
"""
# Paddle 2.6's libpaddle.so carries a zlib of its own and exports its symbols to the whole process: loaded before
# the system zlib, it takes over Pillow's PNG decoder ("codec configuration error", or a crash in inflateReset2).
# Loading the system zlib first, as importing this package does before a command imports Paddle, avoids that.
import zlib  # noqa: F401

# Paddle 3.x warns on every import that ccache is missing, a note for compiling C++ extensions, which nothing
# here does; shown on each command's stderr, it reads like a fault. quiet.py lists it with the other third-party
# warnings that are not about the user's run, filtered from here on (a command's -v shows them again).
from . import quiet

quiet.set_verbose(False)


PYTHON_API = ("create_model", "create_transform", "load_classifier")  # pretrained.py


def __getattr__(name):
    # t2tvit.create_model (and the rest of PYTHON_API) without importing Paddle on `import t2tvit` (see above):
    # resolved on first use.
    if name in PYTHON_API:
        # A user's script gets the commands' CPU settings (cpu_env.py: math threads, MKL's AMD path) before the
        # API loads Paddle, which reads them once, when it loads (without them its dynamic graph computes on one
        # thread). Not on `import t2tvit` itself: scripts/paddle_launch.py imports the package in the launcher,
        # whose processes each set their own share of the cores.
        from . import cpu_env
        cpu_env.catch_up_with_paddle()  # the script imported Paddle first: give it the threads it missed
        from . import pretrained
        return getattr(pretrained, name)
    raise AttributeError(f"module 't2tvit' has no attribute {name!r}")
