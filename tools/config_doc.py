"""Write docs/configuration.md from config/default.yaml (its keys, defaults and comments).

    python tools/config_doc.py            # rewrite the page
    python tools/config_doc.py --check    # exit 1 if the committed page is stale
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import sys

from t2tvit.config_doc import DOC_PATH, render
from t2tvit.errors import cli
from t2tvit.quiet import add_verbose_flag


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_verbose_flag(ap)
    ap.add_argument("--check", action="store_true", help="compare with the committed page instead of writing it")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        with open(DOC_PATH, encoding="utf-8") as f:
            if f.read() != text:
                print(f"error: {DOC_PATH} is stale: run python tools/config_doc.py", file=sys.stderr)
                sys.exit(1)
        return
    with open(DOC_PATH, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {DOC_PATH}")


if __name__ == "__main__":
    main()
