"""No silent skips: under CI (CI=true, as CI runs .ci/run) a skipped test fails, so that a green CI means that
every proof ran; elsewhere a skip stays a skip and the README's `-rs` shows its reason.

CI accepts the skip of a test marked `@pytest.mark.may_skip_in_ci("why")` only: what no CI machine has (a CPU
with bf16, the official T2T-ViT code for regenerating the reference fixtures). A module that skips as a whole
(pytest.importorskip at its top) is a collection error under CI, and installed() fails a test that would check
less without a module. tests/conftest.py installs these hooks; `python -m pytest -p skip_policy` installs them
in any other run (tests/test_skip_policy.py does so).
"""
import importlib.util
import os

import pytest

MARKER = "may_skip_in_ci"


def in_ci():
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def installed(module):
    """Whether module is installed, for a test that checks less without it; under CI its absence fails the test."""
    found = importlib.util.find_spec(module) is not None
    if not found and in_ci():
        pytest.fail(f"CI=true: {module} is not installed, and under CI every proof must run")
    return found


def skip_reason(report):
    """The reason a skip report gives (pytest keeps it as (file, line, 'Skipped: reason'))."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text[len("Skipped: "):] if text.startswith("Skipped: ") else text


def failed_in_ci(report):
    report.outcome = "failed"
    report.longrepr = (f"CI=true: this test skipped ({skip_reason(report)}); under CI every proof must run: "
                       f"install what it needs, or mark it @pytest.mark.{MARKER}(why) if no CI machine can have it")


def pytest_configure(config):
    config.addinivalue_line("markers", f"{MARKER}(why): CI accepts this test's skip (what no CI machine has)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and in_ci() and not item.get_closest_marker(MARKER):
        failed_in_ci(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci():
        failed_in_ci(report)
