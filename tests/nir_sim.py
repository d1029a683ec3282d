"""A small discrete-time simulator of NIR graphs, written against NIR's node equations.

It implements the semantics qsnn_zoo.export.nir.TIME_SEMANTICS states (forward Euler with the
graph's ``dt``; cycle-closing edges delayed by one step; fire on ``>``, reset in the same step;
CubaLIF updates its current before its membrane), independently of the exporter's code, so a
round trip through a file tests both the export and the semantics it claims.
"""
from __future__ import annotations

from typing import Dict, List, Set, Tuple

import numpy as np
import torch
import torch.nn.functional as F

SPIKING = ("LIF", "IF", "CubaLIF", "Threshold")


def _order(graph) -> Tuple[List[str], Set[Tuple[str, str]]]:
    """Evaluation order of the nodes and the cycle-closing (delayed) edges, by a DFS from the inputs."""
    successors: Dict[str, List[str]] = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        successors[src].append(dst)
    state: Dict[str, str] = {}
    back: Set[Tuple[str, str]] = set()
    finished: List[str] = []

    def visit(name: str) -> None:
        state[name] = "open"
        for nxt in successors[name]:
            if state.get(nxt) == "open":
                back.add((name, nxt))
            elif nxt not in state:
                visit(nxt)
        state[name] = "done"
        finished.append(name)

    for name in graph.inputs:
        visit(name)
    return finished[::-1], back


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


class NIRSimulator:
    """Runs a NIRGraph on batched inputs ``[B, ...]`` for T steps, in float64."""

    def __init__(self, graph) -> None:
        self.graph = graph
        self.dt = float(graph.metadata["dt"])
        self.order, self.delayed = _order(graph)
        self.incoming: Dict[str, List[str]] = {name: [] for name in graph.nodes}
        for src, dst in graph.edges:
            self.incoming[dst].append(src)

    def run(self, x: torch.Tensor, T: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Feeds ``x`` at every step; returns the output ``[T, B, ...]`` and every spiking node's
        spikes ``[T, B, ...]`` by node name."""
        x = x.to(torch.float64)
        previous: Dict[str, torch.Tensor] = {}
        state: Dict[str, Dict[str, torch.Tensor]] = {}
        outputs, spikes = [], {n: [] for n, node in self.graph.nodes.items() if type(node).__name__ in SPIKING}
        for _ in range(T):
            current: Dict[str, torch.Tensor] = {}
            for name in self.order:
                node = self.graph.nodes[name]
                if name in self.graph.inputs:
                    current[name] = x
                    continue
                parts = [previous.get(src) if (src, name) in self.delayed else current[src] for src in self.incoming[name]]
                parts = [p for p in parts if p is not None]
                current[name] = self._step(node, sum(parts), state.setdefault(name, {}))
                if name in spikes:
                    spikes[name].append(current[name])
            outputs.append(current[next(iter(self.graph.outputs))])
            previous = current
        return torch.stack(outputs), {n: torch.stack(s) for n, s in spikes.items()}

    def _step(self, node, x: torch.Tensor, state: Dict[str, torch.Tensor]) -> torch.Tensor:
        kind = type(node).__name__
        dt = self.dt
        if kind == "Output":
            return x
        if kind == "Conv2d":
            return F.conv2d(x, _t(node.weight), _t(node.bias), tuple(node.stride), tuple(node.padding), tuple(node.dilation), int(node.groups))
        if kind == "Affine":
            return x @ _t(node.weight).T + _t(node.bias)
        if kind == "Linear":
            return x @ _t(node.weight).T
        if kind == "Scale":
            return x * _t(node.scale)
        if kind == "Flatten":
            return x.flatten(int(node.start_dim) + 1, int(node.end_dim) if node.end_dim < 0 else int(node.end_dim) + 1)
        if kind == "SumPool2d":
            return F.avg_pool2d(x, tuple(node.kernel_size), tuple(node.stride), tuple(node.padding), divisor_override=1)
        if kind == "I":
            v = state.get("v", _t(node.metadata.get("v_init", 0.0)).expand_as(x))
            state["v"] = v + dt * _t(node.r) * x
            return state["v"]
        if kind == "LI":
            v = state.get("v", torch.zeros_like(x))
            state["v"] = v + dt / _t(node.tau) * (_t(node.v_leak) - v + _t(node.r) * x)
            return state["v"]
        if kind == "Threshold":
            return (x > _t(node.threshold)).to(x.dtype)
        if kind == "LIF":
            v = state.get("v", torch.zeros_like(x))
            v = v + dt / _t(node.tau) * (_t(node.v_leak) - v + _t(node.r) * x)
            return self._fire(node, v, state)
        if kind == "CubaLIF":
            i = state.get("i", torch.zeros_like(x))
            v = state.get("v", torch.zeros_like(x))
            i = i + dt / _t(node.tau_syn) * (-i + _t(node.w_in) * x)
            v = v + dt / _t(node.tau_mem) * (_t(node.v_leak) - v + _t(node.r) * i)
            state["i"] = i
            return self._fire(node, v, state)
        raise NotImplementedError(f"nir_sim has no semantics for {kind} nodes")

    @staticmethod
    def _fire(node, v: torch.Tensor, state: Dict[str, torch.Tensor]) -> torch.Tensor:
        z = (v > _t(node.v_threshold)).to(v.dtype)
        state["v"] = torch.where(z > 0, _t(node.v_reset).expand_as(v), v)
        return z
