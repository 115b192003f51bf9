"""The T2T-ViT library behind the commands in tools/: model, data, training parts, checkpoints, deployment.

The commands (tools/train.py, val.py, predict.py, ...) only parse arguments and call into this package; the
package never imports a command. Importing the package itself loads nothing (no Paddle), so a command can
set up the CPU environment before Paddle is imported.
"""
