import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tools/ is a folder of scripts that import each other by module name, as `python tools/x.py` sees them.
sys.path.insert(0, os.path.join(ROOT, "tools"))
