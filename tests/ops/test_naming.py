"""Every op is shaped like fla's: ``chunk_<op>``, ``recurrent_<op>``, ``naive_<op>``, each with its equation."""

import importlib
import inspect
import pkgutil

import pytest

import memlm.ops

OP_MODULES = sorted(m.name for m in pkgutil.iter_modules(memlm.ops.__path__) if not m.ispkg)
NO_RECURRENT_FORM = {"sliding_window_attention"}  # decoding reads the layer's KV cache


def test_every_op_module_is_listed():
    assert OP_MODULES == [
        "based", "gated_delta_rule", "gla", "kda", "neural_memory", "prefix_linear_attention",
        "sliding_window_attention", "ssd",
    ]


@pytest.mark.parametrize("name", OP_MODULES)
def test_each_op_has_its_three_forms_with_an_equation(name):
    module = importlib.import_module(f"memlm.ops.{name}")
    forms = ["chunk", "naive"] if name in NO_RECURRENT_FORM else ["chunk", "recurrent", "naive"]
    for form in forms:
        op = getattr(module, f"{form}_{name}")
        assert op is getattr(memlm.ops, f"{form}_{name}"), f"memlm.ops exports {form}_{name}"
        assert "=" in (op.__doc__ or ""), f"{form}_{name}: its docstring states the equation"
    functions = [f for f, _ in inspect.getmembers(module, inspect.isfunction)]
    assert not [f for f in functions if f.startswith("step_")], "decoding is recurrent_*, not step_*"
    for function in functions:
        assert "chunked" not in inspect.signature(getattr(module, function)).parameters, function
