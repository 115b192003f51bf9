#!/usr/bin/env bash
# Validate. No arguments: Global.output_dir/best.pdckpt of the lit_data demo, on lit_data/val.
#   CONFIG=config/t2t_vit_7.yaml bash scripts/val.sh --weights weights/t2t_vit_7.pdparams -o Data.root=/data/ILSVRC2012
# Extra arguments: --weights FILE, --which best|model|ema, -o Section.key=value. See scripts/launch.sh.
exec "$(dirname "$0")/launch.sh" val.py "$@"
