"""Classify images with an exported model: tools/predict.py with --inference-dir required (same flags).

    python tools/infer.py IMAGE|FOLDER ... --inference-dir DIR [--backend ...] [--precision ...] [-c CONFIG]

Kept so that commands written for earlier versions still run; tools/predict.py is the one to use.
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import sys

import predict

if __name__ == "__main__":
    sys.exit(predict.main(inference_only=True))
