"""The library package's modules import one another one way: no cycle, counting the imports inside functions too
(a cycle hidden in a function still ties two modules into one), and the package never imports a command."""
import ast
import os

from runner import ROOT

PACKAGE = os.path.join(ROOT, "tools", "t2tvit")


def imported_modules(source):
    """The t2tvit modules a module's source imports anywhere (top level or inside functions), relatively or not:
    `from t2tvit import x` is `from . import x` (x a module or a name, which package_imports() drops)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            package = node.level == 1 or (node.level == 0 and node.module and node.module.split(".")[0] == "t2tvit")
            inside = node.module if node.level == 1 else (node.module or "").partition(".")[2]
            if package and inside:  # from .x import y, from t2tvit.x import y
                found.add(inside.split(".")[0])
            elif package:  # from . import x, y; from t2tvit import x, y
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("t2tvit."))
    return found


def package_imports():
    """{module: set of t2tvit modules it imports anywhere in its source (top level or inside functions)}."""
    modules = {name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py")}
    return {module: imported_modules(open(os.path.join(PACKAGE, module + ".py")).read()) & modules - {module}
            for module in modules}


def find_cycle(graph):
    """One import cycle of `graph` as a list of modules, or None."""
    state = {}

    def visit(module, path):
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state:
                cycle = visit(other, path + [other])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle_even_through_imports_inside_functions():
    graph = package_imports()
    assert {"deploy", "backends", "export", "export_files", "quantize"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    # the shape deploy.py and quantize.py had: each imported the other, one of them inside functions
    assert find_cycle({"deploy": {"quantize"}, "quantize": {"deploy"}, "t2t": set()}) == ["deploy", "quantize",
                                                                                           "deploy"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_an_import_counts_in_each_of_its_forms_relative_or_absolute():
    source = ("from .a import x\nfrom . import b, c\nimport t2tvit.d\nfrom t2tvit.e import y\n"
              "def f():\n    from t2tvit import g\n")
    assert imported_modules(source) == {"a", "b", "c", "d", "e", "g"}


def test_the_package_never_imports_a_command():
    commands = {name[:-3] for name in os.listdir(os.path.join(ROOT, "tools")) if name.endswith(".py")}
    for module in os.listdir(PACKAGE):
        if module.endswith(".py"):
            tree = ast.parse(open(os.path.join(PACKAGE, module)).read())
            imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                        for a in node.names}
            imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                         if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
            assert not imported & commands, f"t2tvit/{module} imports the command(s) {imported & commands}"
