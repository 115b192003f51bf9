"""Classify images with an exported model: tools/predict.py with --inference-dir required (same flags).

    python tools/infer.py IMAGE|FOLDER ... --inference-dir DIR [--backend ...] [--precision ...] [-c CONFIG]

Kept so that commands written for earlier versions still run; tools/predict.py is the one to use.
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
from t2tvit.preempt import hold_signals

if __name__ == "__main__":
    hold_signals()  # as predict.py does when run as a command
import sys

import predict

if __name__ == "__main__":
    sys.exit(predict.main(inference_only=True))
