"""House rules of the package: no import cycles; one atomic JSON writer."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

import deadrelu

PACKAGE = Path(deadrelu.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    """Dotted name → file, for every module of the package (a package is its `__init__.py`)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("deadrelu", *path.relative_to(PACKAGE).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module → the deadrelu modules it imports, at module level or inside functions.

    `import a.b.c` and `from a.b import c` point at the deepest module named. Importing a
    submodule also runs its packages' `__init__.py`; that implicit edge is left out, or every
    module would be in a cycle with the package that re-exports it. Imports under
    `if TYPE_CHECKING:` never run (they name types for annotations) and are left out too: the
    report's display methods use render and plots, which name `Report` in annotations only.
    """
    modules = _modules()

    def deepest(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(deepest(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets.update(deepest(f"{base}.{alias.name}") for alias in node.names)
        graph[name] = {target for target in targets if target and target != name}
    # `cli.build_parser` imports every command by name (importlib), which the AST does not show.
    graph["deadrelu.cli"] |= {name for name in modules if re.fullmatch(r"deadrelu\.commands\.[^_.]\w*", name)}
    return graph


def _runtime_nodes(tree: ast.AST):
    """`ast.walk(tree)`, without the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path `[a, b, ..., a]`, or None."""
    state = {}  # module → "open" while on the DFS path, "done" once explored

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state:
                cycle = visit(target, [*path, target])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "deadrelu.errors" in graph["deadrelu.io.files"]  # module level
    assert "deadrelu.io.loading" in graph["deadrelu.engine.scanner"]  # inside a function
    assert {"deadrelu.commands", "deadrelu.commands.scan"} <= graph["deadrelu.cli"]  # importlib
    assert "deadrelu.report" not in graph["deadrelu.fixes.patch"]  # under `if TYPE_CHECKING:` only
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_siblings_import_submodules_not_the_package():
    """`from deadrelu import X` inside the package runs `deadrelu/__init__.py`, which imports the caller."""
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "deadrelu" and not node.level:
                where = f"{path.name}:{node.lineno}"
                raise AssertionError(f"{name}: `from deadrelu import ...` ({where}); import the submodule")


def test_retrain_summary_with_nan_losses_is_valid_json(tmp_path):
    from deadrelu.fixes.retrain import Comparison, VariantResult

    diverged = VariantResult(
        name="patched",
        units=8,
        dead_before=2,
        dying_before=0,
        dead_after=1,
        dying_after=0,
        before={"loss": 0.7},
        after={"loss": float("nan")},
        history={"loss": [0.7, float("inf"), float("nan")]},
    )
    Comparison(variants=[diverged], settings={"epochs": 2, "learning_rate": float("-inf")}).to_json(tmp_path / "c.json")
    text = (tmp_path / "c.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert data["variants"][0]["after"] == {"loss": None}
    assert data["variants"][0]["history"]["loss"] == [0.7, None, None]
    assert data["settings"] == {"epochs": 2, "learning_rate": None}
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temporary file left


def test_write_json_leaves_the_target_alone_on_failure(tmp_path):
    from deadrelu.io.files import write_json

    target = tmp_path / "r.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(TypeError):
        write_json(target, {"ok": 1, "bad": object()})
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_usage_and_data_errors_are_value_errors():
    """As Keras raises `ValueError` for wrong arguments and data, `except ValueError` catches ours."""
    assert issubclass(deadrelu.UsageError, ValueError) and issubclass(deadrelu.DataError, ValueError)
    assert issubclass(deadrelu.UsageError, deadrelu.DeadReluError)
    with pytest.raises(ValueError, match="at least 1"):
        deadrelu.scan(_tiny_model(), None, samples=0)  # a DataError
    with pytest.raises(ValueError, match="at least 1"):
        deadrelu.scan(_tiny_model(), None, batch_size=0)  # a UsageError


def _tiny_model():
    import keras

    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="relu")])


# -- library messages name keywords, the command line names flags ----------------------------


def test_library_errors_name_the_keyword():
    with pytest.raises(deadrelu.UsageError, match=r"^`samples` must be at least 1"):
        deadrelu.scan(_tiny_model(), None, samples=0)
    with pytest.raises(deadrelu.UsageError, match=r"^`batch_size` must be at least 1"):
        deadrelu.scan(_tiny_model(), None, batch_size=0)


@pytest.mark.parametrize("flag, keyword", [("--samples", "samples"), ("--batch-size", "batch_size")])
def test_the_same_errors_from_the_command_line_name_the_flag(flag, keyword, tmp_path, monkeypatch, capfd):
    from deadrelu.cli import main
    from deadrelu.commands import _common

    path = tmp_path / "tiny.keras"
    _tiny_model().save(path)
    monkeypatch.setattr(_common, "positive_int", int)  # let 0 past argparse, to the library's own check
    assert main(["scan", str(path), flag, "0"]) == 2
    err = capfd.readouterr().err
    assert f"deadrelu: error: {flag} must be at least 1 (got 0)" in err and f"`{keyword}`" not in err


def _command(*argv):
    from deadrelu.cli import build_parser

    return build_parser().parse_args(argv).command_parser


def test_flag_names_maps_the_keywords_of_the_command_that_ran():
    from deadrelu.cli import flag_names

    patch = _command("patch", "m.keras", "--to", "leaky")
    assert flag_names("pass `force=True` to overwrite it", patch) == "pass --force to overwrite it"
    assert flag_names("`output='my m.pb'`: no", patch) == "--output 'my m.pb': no"  # -o/--output: the long one
    assert flag_names('pass `labels="y.npy"` or `labels=`', patch) == "pass --labels y.npy or --labels"
    assert flag_names("pass `rescale=1/255`", patch) == "pass --rescale 1/255"
    assert flag_names("`custom_objects` file not found", patch) == "--custom-objects file not found"
    assert flag_names("`prelu_shared_axes='channel'`", patch) == "--prelu-shared-axes channel"
    # Not an option of the command that ran, or not a keyword: left as it is.
    report = _command("report", "r.json")
    assert (
        flag_names("`samples` must be at least 1; `deadrelu scan --json`", report)
        == "`samples` must be at least 1; `deadrelu scan --json`"
    )
    assert flag_names("`batch_size` must be at least 1", None) == "`batch_size` must be at least 1"
