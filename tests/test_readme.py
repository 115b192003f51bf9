"""The README stays true: every config key documented, and the commands it gives exist."""
import os
import re

import yaml

from runner import ROOT

README = open(os.path.join(ROOT, "README.md")).read()


def test_every_config_key_is_documented():
    schema = yaml.safe_load(open(os.path.join(ROOT, "config", "default.yaml")))
    keys = [f"{section}.{key}" for section, values in schema.items() for key in values]
    assert len(keys) > 40
    assert [k for k in keys if f"`{k}`" not in README] == []


def test_ci_runs_the_readme_test_command():
    marker = README.index("<!-- test command -->")
    command = README[marker:].split("\n")[2]
    assert "pip install -r requirements-test.txt" in command and "pytest" in command
    assert "<!-- test command -->" in open(os.path.join(ROOT, ".ci", "run")).read()


def test_referenced_repo_files_exist():
    paths = set(re.findall(r"((?:tools|config|scripts|tests|lit_data)/[\w./-]+\.(?:py|yaml|sh|JPEG))", README))
    assert paths and [p for p in paths if not os.path.isfile(os.path.join(ROOT, p))] == []
