"""The docs stay true: docs/configuration.md is what config/default.yaml renders to, every shell command shown in
README.md or docs/*.md is run by a test or marked as needing what the tests do not have, and every repo file or
relative link a doc names exists.

The convention (checked below): the line before each shell fence (```bash) is a marker,
    <!-- tested by: tests/test_a.py, tests/test_b.py (what it runs there) -->
    <!-- needs: ImageNet, a GPU -->
    <!-- tested by: tests/test_a.py; needs: a network install -->
or the README's `<!-- test command -->` (the block .ci/run executes). Each command of the block (lines, and the
parts of a line joined by &&) is either tested or needed:
- tested: a named test file holds the command's tool (`predict.py`, `scripts/train.sh`, ...) and passes each of
  its long flags as a string argument ("--weights") and names each environment variable it sets (GPUS=...).
  Paths and values differ (the tests use temporary folders and tiny sizes); the tool and its flags may not.
- needed: the command shows what is missing, by the pattern of one need the marker names (NEEDS): an ImageNet
  command has /data/ILSVRC2012 in it, a GPU command GPUS= or --device gpu, and so on.
"""
import glob
import os
import re
import shlex

import pytest

from runner import ROOT
from t2tvit.config_doc import DOC_PATH, render

DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))

# what a command may need that the tests do not have, and how a command shows that it needs it
NEEDS = {
    "ImageNet": r"/data/ILSVRC2012",
    "a GPU": r"\bGPUS=|--device gpu|--trt\b",
    "several machines": r"\bNNODES=",
    "the official weights": r"71\.7_T2T_ViT_7\.pth\.tar|weights/t2t_vit_7\.pdparams|inference/t2t_vit_7\b",
    "a network install": r"^(python3 -m venv \S+|\. \S+/bin/activate|pip install .*|sudo apt-get install .*)$",
    "Fashion-MNIST": r"fashion[-_]mnist|\bfmnist_",
    "your own data": r"\bmy_dataset\b",
    "minutes of CPU": r"config/lit_memorise\.yaml|--rounds 3 --stages",
}
MARKER = re.compile(r"<!-- (?:tested by: (?P<tested>[^;]*?))?(?:;\s*)?(?:needs: (?P<needs>.*?))? -->$")
TEST_COMMAND = "<!-- test command -->"
FILES = re.compile(r"(?<![\w./-])((?:tools|config|scripts|tests|lit_data|docs)/[\w./-]*\w)")


def read(doc):
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        return f.read()


def bash_blocks(doc):
    """(line number, the line before the fence, [command lines]) of each shell block (```bash, ```sh...) of doc."""
    lines = read(doc).splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if re.match(r"^```(bash|sh|shell|console)$", line.strip()):  # any shell block, however it is tagged
            end = lines.index("```", i + 1)
            blocks.append((i + 1, lines[i - 1].strip() if i else "", lines[i + 1:end]))
    return blocks


def commands(block_lines):
    """The commands of a block: each line without its `# comment`, split at &&."""
    for line in block_lines:
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        for part in line.split("&&"):
            if part.strip():
                yield " ".join(part.split())


def signature(command):
    """(tool, long flags, environment names) of a command: what a test must run for it to count as tested."""
    tokens = shlex.split(command.replace("[", " ").replace("]", " "))
    env = [t.split("=", 1)[0] for t in tokens if re.match(r"^[A-Z_]+=", t)]
    tools = [t for t in tokens if re.match(r"^(tools|scripts)/\w+\.(py|sh)$", t)]
    if tools:
        tool = tools[0] if tools[0].startswith("scripts/") else os.path.basename(tools[0])
    else:
        tool = " ".join(tokens[:3]) if tokens[:3] == ["python", "-m", "pytest"] else None
    flags = sorted({t for t in tokens if re.match(r"^--[a-z][\w-]*$", t)})
    return tool, flags, env


def runs(text, tool):
    """Whether a test file's text names tool: literally, or (a script) as f"scripts/{tool}.sh" over "NAME"."""
    script = re.match(r"^scripts/(\w+)\.sh$", tool)
    return tool in text or bool(script and re.search(r"scripts/\{\w+\}\.sh", text) and f'"{script.group(1)}"' in text)


def untested(command, test_files):
    """Why no file of test_files runs command, or '' when one does."""
    tool, flags, env = signature(command)
    if tool is None:
        return f"{command!r} runs no tool of this repo"
    for path in test_files:
        text = read(path)
        if runs(text, tool) and all(f'"{f}"' in text for f in flags) and all(e in text for e in env):
            return ""
    return f"{command!r}: no file of {test_files} runs {tool} with {flags + env}"


def marker_problems(doc, line_number, marker, block):
    where = f"{doc}:{line_number}"
    if marker == TEST_COMMAND:
        return []
    m = MARKER.match(marker)
    if not m or not (m.group("tested") or m.group("needs")):
        return [f"{where}: the ```bash block has no <!-- tested by: ... --> or <!-- needs: ... --> line before it"]
    tested, needs = ([item.strip() for item in re.sub(r"\([^)]*\)", "", m.group(g) or "").split(",") if item.strip()]
                     for g in ("tested", "needs"))  # a parenthesis says what is run there or why
    problems = [f"{where}: {t} does not exist" for t in tested if not os.path.isfile(os.path.join(ROOT, t))]
    problems += [f"{where}: unknown need {n!r} (known: {sorted(NEEDS)})" for n in needs if n not in NEEDS]
    if problems:
        return problems
    for command in commands(block):
        if any(re.search(NEEDS[n], command) for n in needs):
            continue
        reason = untested(command, tested) if tested else f"{command!r} shows none of the needs {needs}"
        if reason:
            problems.append(f"{where}: {reason}")
    return problems


def test_the_configuration_page_is_what_default_yaml_renders_to():
    with open(DOC_PATH, encoding="utf-8") as f:
        assert f.read() == render(), "docs/configuration.md is stale: run python tools/config_doc.py"


def test_the_config_doc_command_rewrites_a_stale_page_and_check_says_so(tmp_path, monkeypatch, capsys):
    import config_doc

    page = tmp_path / "configuration.md"
    page.write_text("# stale\n")
    monkeypatch.setattr(config_doc, "DOC_PATH", str(page))
    with pytest.raises(SystemExit) as stopped:
        config_doc.main(["--check"])
    assert stopped.value.code == 1 and "is stale: run python tools/config_doc.py" in capsys.readouterr().err
    config_doc.main([])
    assert page.read_text() == render()
    config_doc.main(["--check"])


def test_the_docs_are_split_by_job():
    assert {os.path.basename(d) for d in DOCS[1:]} >= {"training.md", "evaluation.md", "finetuning.md",
                                                       "deployment.md", "faithfulness.md", "configuration.md",
                                                       "safety.md"}


@pytest.mark.parametrize("doc", DOCS)
def test_every_shown_command_is_tested_or_says_what_it_needs(doc):
    problems = []
    for line_number, marker, block in bash_blocks(doc):
        problems += marker_problems(doc, line_number, marker, block)
    assert problems == []


@pytest.mark.parametrize("doc", DOCS)
def test_every_repo_file_and_relative_link_a_doc_names_exists(doc):
    text, base = read(doc), os.path.dirname(os.path.join(ROOT, doc))
    named = {p for p in FILES.findall(text) if "<" not in p and "*" not in p}
    missing = [p for p in named if not os.path.exists(os.path.join(ROOT, p))]
    links = {link for link in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"^(https?:|mailto:)", link)}
    for link in links:
        path, _, anchor = link.partition("#")
        target = os.path.join(base, path) if path else os.path.join(ROOT, doc)
        if not os.path.exists(target):
            missing.append(link)
        elif anchor and anchor not in anchors(os.path.relpath(target, ROOT)):
            missing.append(link)
    assert sorted(missing) == []


def anchors(doc):
    """The #anchors of a Markdown file's headings, as GitHub makes them: lower case, punctuation dropped, - for spaces."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", read(doc), re.M)}


def test_a_command_with_an_unknown_flag_or_no_marker_is_caught():
    # the checks above can fail: a flag no test passes, a missing marker, a need the command does not show
    assert marker_problems("x.md", 1, "<!-- tested by: tests/test_predict.py -->",
                           ["python tools/predict.py a.jpg --no-such-flag"])
    assert marker_problems("x.md", 1, "", ["python tools/predict.py a.jpg"])
    assert marker_problems("x.md", 1, "<!-- needs: ImageNet -->", ["python tools/val.py -o Data.root=lit_data"])
    assert not marker_problems("x.md", 1, "<!-- tested by: tests/test_predict.py -->",
                               ["python tools/predict.py a.jpg --weights w --topk 3"])
