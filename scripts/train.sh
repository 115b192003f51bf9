#!/usr/bin/env bash
# Train. No arguments: the lit_data demo (config/t2t_vit_7_demo.yaml) on one device, GPU if Paddle sees one.
#   CONFIG=config/t2t_vit_7.yaml bash scripts/train.sh -o Data.root=/data/ILSVRC2012   the paper recipe
#   GPUS=0,1,2,3 bash scripts/train.sh ...                                              four GPUs
# Extra arguments are config overrides (-o Section.key=value), --resume PATH or --accept-changes (continue a run
# under a changed config: docs/training.md). See scripts/launch.sh.
exec "$(dirname "$0")/launch.sh" train.py "$@"
