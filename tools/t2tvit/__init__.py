"""The T2T-ViT library behind the commands in tools/: model, data, training parts, checkpoints, deployment.

The commands (tools/train.py, val.py, predict.py, ...) only parse arguments and call into this package; the
package never imports a command. Importing the package loads no Paddle, so a command can set up the CPU
environment before Paddle is imported (t2tvit.cpu_env, every command's first import).
"""
# Paddle 2.6's libpaddle.so carries a zlib of its own and exports its symbols to the whole process: loaded before
# the system zlib, it takes over Pillow's PNG decoder ("codec configuration error", or a crash in inflateReset2).
# Loading the system zlib first, as importing this package does before a command imports Paddle, avoids that.
import zlib  # noqa: F401
