"""Test set-up: tools/ on the path, the `slow` marker, the skip policy, the lit_data fixture, the official
checkpoint and the shared training runs.

tools/ goes on the path first, as `python tools/x.py` sees it: the commands and the t2tvit package. The helpers
that run tools (run_tool with a timeout, error_lines, losses, ...) live in tests/runner.py, once. Tests that run
tools in subprocesses are marked `slow` (`python -m pytest -m "not slow" tests` skips them for a quick check).
Under CI=true a skipped test fails unless it is marked may_skip_in_ci (tests/skip_policy.py).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import runner  # noqa: E402  (needs tools/ on the path)
import skip_policy  # noqa: E402
from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401  (the hooks)
from t2tvit import cpu_env  # noqa: E402

# The suite's own process computes on the math threads Paddle chose when it loaded, throughout: which test first
# calls the package's API (whose first use gives a Paddle loaded before it more threads, cpu_env.py) must not
# change the arithmetic of the tests after it. That first use is tested in fresh processes
# (tests/test_runtime_settings.py).
cpu_env.catch_up_with_paddle = lambda: None


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs tools in subprocesses (seconds to a minute each)")
    skip_policy.pytest_configure(config)


@pytest.fixture(scope="session")
def lit_data():
    return runner.LIT_DATA


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory):
    """The reference weights (tests/data/official/t2t_vit_7) as an official release file, for the converter."""
    pytest.importorskip("torch", reason="torch is not installed (requirements-test.txt installs it)")
    return runner.write_official_checkpoint(tmp_path_factory.mktemp("official") / "t2t_vit_7.pth.tar")


# One training run on one process and one on two, each made once per session: test_pipeline checks their logs,
# checkpoints, val and predict; test_resume resumes interrupted runs to them. Tests only read their folders.
@pytest.fixture(scope="session")
def one_process_run(tmp_path_factory):
    return runner.train_once(tmp_path_factory.mktemp("one"))


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory):
    return runner.train_once(tmp_path_factory.mktemp("two"), nproc=2)
