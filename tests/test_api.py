"""The public API is what docs/python-api.md says: every public function's signature, one convention.

The page is the contract for users; this test keeps it exact. Each public function (and the
monitor's constructor) must appear in a ```python block as `deadrelu.NAME(...)` with its full
signature: the same parameters in the same order, the same kinds (positional or keyword-only) and
the same defaults as `inspect.signature` reports.
"""

from __future__ import annotations

import ast
import inspect
import re

import pytest

import deadrelu
from paths import ROOT

PAGE = ROOT / "docs" / "python-api.md"


def documented_signatures() -> dict[str, ast.arguments]:
    """NAME → the parsed parameters of `deadrelu.NAME(...)` in the page's python blocks."""
    found = {}
    for block in re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S):
        for match in re.finditer(r"^deadrelu\.(\w+)\(", block, re.M):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(block)):
                depth += {"(": 1, ")": -1}.get(block[end], 0)
                if depth == 0:
                    break
            params = block[match.end() : end]
            tree = ast.parse(f"def f({params}): pass")
            found[match.group(1)] = tree.body[0].args
    return found


def public_callables() -> dict[str, object]:
    """The functions of `deadrelu.__all__`, and the classes a user constructs with arguments."""
    names = {}
    for name in deadrelu.__all__:
        value = getattr(deadrelu, name)
        if inspect.isfunction(value) or name == "DeadReluMonitor":
            names[name] = value
    return names


def _doc_params(args: ast.arguments) -> list[tuple[str, str, object]]:
    """(name, kind, default) from the page; default is the literal value, or its source text."""
    out = []
    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for arg, default in zip(positional, defaults):
        out.append((arg.arg, "positional", _literal(default)))
    if args.vararg:
        out.append((args.vararg.arg, "*args", inspect.Parameter.empty))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        out.append((arg.arg, "keyword", _literal(default)))
    if args.kwarg:
        out.append((args.kwarg.arg, "**kwargs", inspect.Parameter.empty))
    return out


def _literal(node):
    if node is None:
        return inspect.Parameter.empty
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)


def _code_params(function) -> list[tuple[str, str, object]]:
    kinds = {
        inspect.Parameter.POSITIONAL_ONLY: "positional",
        inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
        inspect.Parameter.VAR_POSITIONAL: "*args",
        inspect.Parameter.KEYWORD_ONLY: "keyword",
        inspect.Parameter.VAR_KEYWORD: "**kwargs",
    }
    return [(p.name, kinds[p.kind], p.default) for p in inspect.signature(function).parameters.values()]


def test_the_page_parser_reads_wrapped_signatures():
    args = ast.parse('def f(model, to="leaky", *, alpha=0.01,\n      sites=None): pass').body[0].args
    assert _doc_params(args) == [
        ("model", "positional", inspect.Parameter.empty),
        ("to", "positional", "leaky"),
        ("alpha", "keyword", 0.01),
        ("sites", "keyword", None),
    ]


@pytest.mark.parametrize("name", sorted(public_callables()))
def test_every_public_signature_is_the_documented_one(name):
    documented = documented_signatures()
    assert name in documented, f"docs/python-api.md has no ```python block with `deadrelu.{name}(...)`"
    code = _code_params(public_callables()[name])
    page = _doc_params(documented[name])
    assert [(n, k) for n, k, _ in page] == [(n, k) for n, k, _ in code], f"deadrelu.{name}: parameters differ"
    for (param, _, doc_default), (_, _, code_default) in zip(page, code):
        if isinstance(doc_default, str) and not isinstance(code_default, str):
            assert doc_default == repr(code_default), f"deadrelu.{name}({param}=...): {doc_default} ≠ {code_default!r}"
        else:
            assert doc_default == code_default, f"deadrelu.{name}({param}=...): {doc_default!r} ≠ {code_default!r}"


def test_no_public_function_hides_its_keywords():
    """Explicit keywords, not `**options`: a user (and their editor) sees every argument."""
    hidden = [
        name for name, function in public_callables().items() if "**kwargs" in {k for _, k, _ in _code_params(function)}
    ]
    assert not hidden, hidden


def test_the_three_fixing_verbs_share_one_convention():
    """`patch`/`revive`/`prune` return the model; `*_model` twins return the result; same selection keywords."""
    for verb in ("patch", "revive", "prune"):
        plain, twin = getattr(deadrelu, verb), getattr(deadrelu, f"{verb}_model")
        assert "keras.Model" in str(inspect.signature(plain).return_annotation), verb
        assert "Result" in str(inspect.signature(twin).return_annotation), f"{verb}_model"
        for function in (plain, twin):
            parameters = inspect.signature(function).parameters
            for keyword in ("sites", "layers", "only", "strategy"):
                assert parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY, (function.__name__, keyword)
                assert parameters[keyword].default is None, (function.__name__, keyword)
        assert list(inspect.signature(plain).parameters) == list(inspect.signature(twin).parameters)
    for name in ("revive_in_place", "revive_with_result", "patch_self_check", "SelfCheckError", "PruneCheckError"):
        assert not hasattr(deadrelu, name), f"deadrelu.{name} was removed (0.x, never released)"
