"""docs/configuration.md, written from config/default.yaml (its keys, defaults and comments), so the page cannot
drift from the schema the tools check configs against. tools/config_doc.py writes it; tests/test_docs.py fails
when the committed page differs from what this renders."""
import os
import re

import yaml

from .config import ROOT, SCHEMA_PATH
from .errors import UserError

DOC_PATH = os.path.join(ROOT, "docs", "configuration.md")

INTRO = """\
A config is YAML with sections `Global`, `Model`, `Data`, `Augment`, `Optimizer`, `Scheduler`, `EMA`;
`_base_: file.yaml` starts from another config. `config/default.yaml` lists every key with its default and
meaning: it is the reference (and the schema: a key that is not in it is an error that suggests the
closest one, and a value of the wrong type or outside its choices is an error naming the key). Override
anything on the command line, PaddleClas style: `-o Global.epochs=100 Data.root=/data/ILSVRC2012`."""

SECTION = re.compile(r"^(\w+):\s*(?:#.*)?$")
# "  key: value  # meaning": the value is the text before a " #" (no default holds one), the comment is optional
KEY = re.compile(r"^  (\w+):\s*(.*?)\s*(?:\s#\s?(.*))?$")


def read_schema(path=SCHEMA_PATH):
    """(header comment lines, [(section, [(key, default as written, meaning)])]) of default.yaml, checked
    against what YAML itself reads there, so a line this reader misparses is an error, not a wrong page."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    header, sections = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not sections and line.startswith("#"):
            header.append(line.lstrip("#").strip())
        elif SECTION.match(line):
            sections.append((SECTION.match(line).group(1), []))
        elif KEY.match(line) and sections:
            key, default, meaning = KEY.match(line).groups()
            sections[-1][1].append((key, default, (meaning or "").strip()))
        elif line.strip() and not line.lstrip().startswith("#"):
            raise UserError(f"{path}:{number}: not a `Section:` or `  key: value  # meaning` line: {line!r}")
    parsed = {section: [k for k, _, _ in keys] for section, keys in sections}
    loaded = {section: list(values) for section, values in yaml.safe_load(text).items()}
    if parsed != loaded:
        raise UserError(f"{path}: the lines read as keys {parsed} differ from the YAML's keys {loaded}")
    return header, sections


def cell(text):
    return text.replace("|", "\\|")


def render(path=SCHEMA_PATH):
    """The Markdown text of docs/configuration.md."""
    header, sections = read_schema(path)
    lines = ["# Configuration", "",
             "<!-- Generated from config/default.yaml by `python tools/config_doc.py`: edit that file, not this one. -->",
             "", INTRO, "", "From the head of `config/default.yaml`:", "", "> " + " ".join(header), ""]
    for section, keys in sections:
        lines += [f"## {section}", "", "| key | default | meaning |", "| --- | --- | --- |"]
        lines += [f"| `{section}.{key}` | `{cell(default)}` | {cell(meaning)} |" for key, default, meaning in keys]
        lines.append("")
    return "\n".join(lines)
