"""Parameters and MACs per variant and input size, counted as fvcore counts them (FLOPs = 2 x MACs).

    python tools/count_macs.py [--model t2t_vit_7 ...] [--img-size 224 | HxW | H W]
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import sys

from t2tvit.errors import cli
from t2tvit.macs import KINDS, count_macs, count_parameters
from t2tvit.quiet import add_verbose_flag
from t2tvit.sizes import parse_size
from t2tvit.t2t import VARIANTS, create_model


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_verbose_flag(ap)
    ap.add_argument("--model", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--img-size", nargs="+", default=["224"], metavar="S", help="S, HxW or H W")
    args = ap.parse_args(argv)
    size = parse_size(args.img_size)
    print(f"input {size[0]}x{size[1]}; MACs as fvcore counts them (LayerNorm 5 per element); FLOPs = 2 x MACs")
    print("| model | params (M) | trainable (M) | frozen (M) | GMACs | " + " | ".join(KINDS) + " |")
    for name in args.model:
        model = create_model(name, img_size=size)
        total, trainable, frozen = count_parameters(model)
        macs = count_macs(model, size)
        print(f"| {name} | {total / 1e6:.3f} | {trainable / 1e6:.3f} | {frozen / 1e6:.3f} | "
              f"{sum(macs.values()) / 1e9:.3f} | " + " | ".join(f"{macs[k] / 1e9:.4f}" for k in KINDS) + " |")


if __name__ == "__main__":
    sys.exit(main())
