"""The Graph container rejects every broken invariant with an error that names the field and the fix."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flexgnn_core.spec import Graph, GraphError
from tests.graphs import tricky_graph


def _fields(graph: Graph) -> dict:
    return {f.name: getattr(graph, f.name) for f in dataclasses.fields(graph)}


def _rebuild(**changes) -> Graph:
    fields = _fields(tricky_graph())
    fields.update(changes)
    return Graph(**fields)


def _with(name, edit):
    """A copy of field ``name`` of the tricky graph with ``edit`` applied in place."""
    value = getattr(tricky_graph(), name).clone()
    edit(value)
    return {name: value}


def test_valid_graph_passes():
    graph = tricky_graph()
    assert graph.num_nodes == 48 and graph.num_edges > 0
    graph.validate()


BROKEN = [
    ("col", "out of range", _with("col", lambda c: c.__setitem__(0, 48))),
    ("col", "out of range", _with("col", lambda c: c.__setitem__(-1, -1))),
    ("col", "is not [E]", {"col": tricky_graph().col.unsqueeze(1)}),
    ("rowptr", "not monotone", _with("rowptr", lambda r: r.__setitem__(5, r[7] + 1))),
    ("rowptr", "must start at 0", _with("rowptr", lambda r: r.__setitem__(0, 1))),
    ("rowptr", "must start at 0", _with("rowptr", lambda r: r.__setitem__(-1, r[-1] - 1))),
    ("rowptr", "dtype", {"rowptr": tricky_graph().rowptr.to(torch.int32)}),
    ("x", "shape", {"x": torch.zeros(47, 7)}),
    ("x", "zero feature columns", {"x": torch.zeros(48, 0)}),
    ("x", "NaN or Inf in 1 rows", _with("x", lambda x: x.__setitem__((3, 2), float("nan")))),
    ("x", "NaN or Inf in 2 rows", _with("x", lambda x: x[:, 0].index_fill_(0, torch.tensor([4, 9]), float("inf")))),
    ("x", "dtype", {"x": torch.zeros(48, 7, dtype=torch.float64)}),
    ("y", "labels outside [-1, 4)", _with("y", lambda y: y.__setitem__(0, 4))),
    ("y", "labels outside [-1, 4)", _with("y", lambda y: y.__setitem__(0, -2))),
    ("y", "shape", {"y": torch.zeros(49, dtype=torch.int64)}),
    ("train_mask", "empty split", {"train_mask": torch.zeros(48, dtype=torch.bool)}),
    ("val_mask", "empty split", {"val_mask": torch.zeros(48, dtype=torch.bool)}),
    ("test_mask", "empty split", {"test_mask": torch.zeros(48, dtype=torch.bool)}),
    ("test_mask", "shape", {"test_mask": torch.ones(47, dtype=torch.bool)}),
    ("train_mask", "unlabelled", _with("train_mask", lambda m: m.__setitem__(43, True))),  # vertex 43 has y = -1
    ("num_classes", "integer >= 2", {"num_classes": 1}),
    ("name", "non-empty string", {"name": ""}),
]


@pytest.mark.parametrize("field_name,problem,change", BROKEN, ids=[f"{f}:{p}" for f, p, _ in BROKEN])
def test_broken_field_is_named(field_name, problem, change):
    with pytest.raises(GraphError) as info:
        _rebuild(**change)
    message = str(info.value)
    assert f"graph field '{field_name}'" in message
    assert problem in message
    assert "Fix:" in message


def test_graph_error_is_a_value_error():
    """Callers that catch ValueError for bad input (the harness) also catch broken graphs."""
    assert issubclass(GraphError, ValueError)
