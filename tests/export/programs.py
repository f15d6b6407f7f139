"""``.pt2`` programs built in the tests (none shipped): clean ones, and crafted ones whose graph
calls what a trusted program may still not call (a file reader, a custom or non-core operator).

A graph that calls ``aten.from_file`` cannot be captured by ``torch.export`` (the operator has
no fake kernel), so it is made by capturing ``torch.ones`` and pointing that node at
``aten.from_file`` before saving: the shape metadata stays valid, and the archive is what an
attacker would write.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: A custom operator, registered once per test process (the namespace is the tests' own).
CUSTOM_OP = "wnconvert_tests::shift"


@torch.library.custom_op(CUSTOM_OP, mutates_args=())
def _shift(x: torch.Tensor) -> torch.Tensor:
    return x + 1


@_shift.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Linear(torch.nn.Module):
    """The smallest clean program: one linear layer (aten.linear, decomposed by torch)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Plumbing(torch.nn.Module):
    """What export puts in ordinary graphs besides core operators: a tensor constant
    (lift_fresh_copy), an in-place op, a composite reshape and size arithmetic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        y = torch.relu_(x + torch.tensor([1.0, 2.0]))
        return y[: n - 1].reshape(-1).contiguous() * n


class Ones(torch.nn.Module):
    """``x + torch.ones(4)``: the ``ones`` node is what :func:`reads_file` repoints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones(4)


class Branches(torch.nn.Module):
    """Control flow: the ``ones`` call sits in a branch, a graph nested in the program."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda x: x + torch.ones(4), lambda x: x * 2, (x,))


class Custom(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.wnconvert_tests.shift(x) * 2


class NonCore(torch.nn.Module):
    """``digamma``: an ATen operator neither tagged core nor decomposed by torch 2.13."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.digamma(x)


def save_program(module: torch.nn.Module, path: Path, *args: torch.Tensor,
                 edit: Callable[[Any], None] | None = None, **export: Any) -> Path:
    """``torch.export`` ``module`` on ``args``, let ``edit`` change the program, save it."""
    program = torch.export.export(module.eval(), args, **export)
    if edit is not None:
        edit(program)
    torch.export.save(program, str(path))
    return path


def reads_file(target: Path) -> Callable[[Any], None]:
    """An edit that makes every ``aten.ones`` call (in any nested graph too) read ``target``
    with ``aten.from_file(shared=True)``: run, it would create the file or map it writable."""

    def edit(program: Any) -> None:
        for module in program.graph_module.modules():
            if not isinstance(module, torch.fx.GraphModule):
                continue
            for node in module.graph.nodes:
                if node.target is torch.ops.aten.ones.default:
                    node.target = torch.ops.aten.from_file.default
                    node.args = (str(target),)
                    node.kwargs = {"shared": True, "size": 4, "dtype": torch.float32}
            module.recompile()

    return edit
