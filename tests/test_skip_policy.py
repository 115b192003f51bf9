"""A green CI means that every proof ran: under CI=true a skipped test fails (tests/skip_policy.py) unless it is
marked may_skip_in_ci; elsewhere a skip stays a skip, and the README's test command shows its reason (-rs).
Each check runs pytest with the policy on a tiny test file, in a subprocess."""
import os
import re
import subprocess
import sys

from runner import ROOT

TINY = '''
import pytest


def test_runs():
    pass


def test_needs_a_backend():
    pytest.importorskip("no_such_backend_t2tvit", reason="no_such_backend_t2tvit is not installed")


@pytest.mark.skipif(True, reason="the reference fixtures are missing")
def test_needs_the_fixtures():
    pass


@pytest.fixture
def bf16_cpu():
    pytest.skip("this CPU has no bf16")


def test_needs_bf16_through_a_fixture(bf16_cpu):
    pass


@pytest.mark.may_skip_in_ci("no CI machine has bf16")
def test_needs_bf16_and_ci_accepts_that():
    pytest.skip("this CPU has no bf16")
'''
REASONS = ("no_such_backend_t2tvit is not installed", "the reference fixtures are missing", "this CPU has no bf16")
SKIPS_WHOLE = '''
import pytest

pytest.importorskip("no_such_backend_t2tvit", reason="no_such_backend_t2tvit is not installed")


def test_never_collected():
    pass
'''


def pytest_on(tmp_path, source, ci):
    test = tmp_path / "test_tiny.py"
    test.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update({"CI": "true"} if ci else {})
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "tests"), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_policy", "-p", "no:cacheprovider", "-q",
                           "-rs", str(test)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def summary(result):
    return result.stdout.strip().splitlines()[-1]


def test_outside_ci_skips_stay_skips_and_rs_shows_each_reason(tmp_path):
    r = pytest_on(tmp_path, TINY, ci=False)
    assert r.returncode == 0, r.stdout
    assert re.match(r"1 passed, 4 skipped in ", summary(r)), r.stdout
    assert all(re.search(rf"^SKIPPED \[\d\] .*{reason}", r.stdout, re.M) for reason in REASONS), r.stdout


def test_under_ci_a_skip_fails_unless_the_test_is_marked_may_skip_in_ci(tmp_path):
    r = pytest_on(tmp_path, TINY, ci=True)
    assert r.returncode == 1, r.stdout
    # a skip in setup (skipif, a fixture's) fails as an error; the marked test's skip stays a skip, with its reason
    assert re.match(r"1 failed, 1 passed, 1 skipped, 2 errors in ", summary(r)), r.stdout
    assert all(f"CI=true: this test skipped ({reason}); under CI every proof must run" in r.stdout
               for reason in REASONS), r.stdout
    assert re.search(r"^SKIPPED \[1\] .*this CPU has no bf16", r.stdout, re.M), r.stdout


def test_under_ci_a_module_that_skips_as_a_whole_is_a_collection_error(tmp_path):
    assert pytest_on(tmp_path, SKIPS_WHOLE, ci=False).returncode == 5  # nothing ran (.ci/run fails on that too)
    r = pytest_on(tmp_path, SKIPS_WHOLE, ci=True)
    assert r.returncode == 2 and "1 error" in summary(r), r.stdout
    assert "CI=true: this test skipped (no_such_backend_t2tvit is not installed)" in r.stdout


def test_the_readme_and_ci_run_the_suite_with_skip_reasons_shown_and_ci_set():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    command = readme[readme.index("<!-- test command -->"):].split("\n")[2]
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert command.endswith("python -m pytest -q -rs tests")
    assert "python -m pytest -q -rs tests" in ci.split('run "Paddle 2.6.2"')[1]
    assert re.search(r"^export CI=true$", ci, re.M)


def test_what_the_readme_says_may_skip_in_ci_is_what_is_marked_may_skip_in_ci():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    listed = readme[readme.index("What may skip, and why:"):readme.index("Under `CI=true`")].split("\n- ")[1:]
    count = re.search(r"Under `CI=true` \(`.ci/run` sets it\) only the first (\w+) may skip", readme).group(1)
    said = {name for item in listed[:["one", "two", "three", "four", "five"].index(count) + 1]
            for name in re.findall(r"tests/(test_\w+\.py)", item)}
    tests = os.path.join(ROOT, "tests")
    marked = {name for name in os.listdir(tests) if name.startswith("test_") and name != "test_skip_policy.py"
              and "mark.may_skip_in_ci(" in open(os.path.join(tests, name), encoding="utf-8").read()}
    assert said == marked
