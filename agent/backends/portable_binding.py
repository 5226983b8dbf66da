"""The portable step's state kept inside ONNX Runtime between steps (IO binding, two buffers).

Every state slot the step changes (parameters, buffers, optimizer state) has two numpy buffers,
A and B, wrapped as OrtValues without copying (``ortvalue_from_numpy`` shares CPU memory). Two
IO bindings are made once: one reads A and writes the step's ``new/<slot>`` outputs into B, the
other reads B and writes A. A step binds only the batch and runs; the roles then swap. Nothing
is copied between numpy and ONNX Runtime per step except the batch itself; slots the step does
not change (frozen parameters) have one buffer bound as input in both bindings.

More sessions of the same step graph can be attached to the same buffers (``attach``): the
backend runs full batches on a session whose batch axis is fixed (ORT then folds the shape
computations away) and the short last batch on the dynamic one; both read and write the same
A/B buffers, so which one ran a step does not matter to the next.

The arrays returned by :meth:`BoundState.current` are live: the next step overwrites the other
buffer and the one after it this one. Callers copy what they keep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedge.protocol.errors import FedgeError

from . import portable_epoch as epoch

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


class BoundState:
    """Double-buffered step state bound to one ``InferenceSession`` with IO bindings."""

    def __init__(
        self,
        ort: Any,
        session: Any,
        state: dict[str, np.ndarray],
        *,
        updates: list[tuple[str, str]],
        lr: np.ndarray,
        lr_input: str = "lr",
        loss_output: str = "loss",
    ) -> None:
        changing = {slot for slot, _ in updates}
        first = {n: np.array(v, order="C", copy=True) for n, v in state.items()}
        second = {n: (np.empty_like(v) if n in changing else v) for n, v in first.items()}
        self._buffers = (first, second)
        self._loss = _loss_buffer(session, loss_output)
        self._lr = np.array(lr, dtype=np.float32)  # held: the bindings point at its memory
        self._values: list[Any] = []  # OrtValues (and their arrays) the bindings point at
        self._ort, self._updates = ort, updates
        self._names = (lr_input, loss_output)
        self._sessions: list[tuple[Any, tuple[Any, Any]]] = []
        self._inputs: list[dict[str, np.ndarray]] = []  # per session: bound batch buffers
        self._epoch: tuple[Any, tuple[Any, Any]] | None = None  # attach_epoch's session
        self.attach(session)
        self._current = 0

    def attach(self, session: Any, *, inputs: dict[str, np.ndarray] | None = None) -> int:
        """Bind another session of the same step graph to these buffers; returns its index
        for :meth:`step` (the first session, given at construction, is 0).

        ``inputs`` (a session with fixed input shapes): buffers shaped like these arrays are
        bound once, and a step copies the batch into them (``np.copyto``, ~1 us) instead of
        binding it (``bind_cpu_input`` builds an OrtValue per input per step, ~2-3 us each).
        """
        lr_input, loss_output = self._names
        bindings = tuple(
            self._bind(self._ort, session, src, dst, self._updates, lr_input, loss_output)
            for src, dst in ((0, 1), (1, 0))
        )
        # np.empty, not empty_like(ascontiguousarray(a)): that makes a 0-d seed 1-d
        buffers = {n: np.empty(np.shape(a), np.asarray(a).dtype) for n, a in (inputs or {}).items()}
        for binding in bindings:
            for name, array in buffers.items():
                binding.bind_ortvalue_input(name, self._wrap(self._ort, array))
        self._sessions.append((session, bindings))
        self._inputs.append(buffers)
        return len(self._sessions) - 1

    def _bind(
        self,
        ort: Any,
        session: Any,
        src: int,
        dst: int,
        updates: list[tuple[str, str]],
        lr_input: str,
        loss_output: str | None,
        input_name: Callable[[str], str] = str,
    ) -> Any:
        binding = session.io_binding()
        for name, array in self._buffers[src].items():
            binding.bind_ortvalue_input(input_name(name), self._wrap(ort, array))
        binding.bind_ortvalue_input(lr_input, self._wrap(ort, self._lr))
        for slot, output in updates:
            binding.bind_ortvalue_output(output, self._wrap(ort, self._buffers[dst][slot]))
        if loss_output is not None:
            binding.bind_ortvalue_output(loss_output, self._wrap(ort, self._loss))
        return binding

    def attach_epoch(self, session: Any) -> None:
        """Bind the epoch graph (``portable_epoch.py``: the step in a Loop) to these buffers:
        ``init/<slot>`` reads the current buffer, ``final/<slot>`` writes the other one."""
        changing = {slot for slot, _ in self._updates}

        def input_name(slot: str) -> str:
            return epoch.initial_name(slot) if slot in changing else slot

        finals = [(slot, epoch.final_name(slot)) for slot, _ in self._updates]
        lr_input, _ = self._names
        self._epoch = (
            session,
            tuple(
                self._bind(self._ort, session, src, dst, finals, lr_input, None, input_name)
                for src, dst in ((0, 1), (1, 0))
            ),
        )

    def run_epoch(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Run the epoch graph on ``inputs`` (``steps`` and the ``epoch/<name>`` tensors);
        returns the steps' losses. State stays bound, as after as many :meth:`step` calls."""
        if self._epoch is None:
            raise FedgeError("no epoch graph is attached to this state (attach_epoch)")
        runner, bindings = self._epoch
        binding = bindings[self._current]
        for name, array in inputs.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(epoch.LOSSES, "cpu")  # [steps]: its size changes, ORT allocates
        runner.run_with_iobinding(binding)
        self._current = 1 - self._current
        return binding.get_outputs()[-1].numpy()

    def _wrap(self, ort: Any, array: np.ndarray) -> Any:
        value = ort.OrtValue.ortvalue_from_numpy(array)
        self._values.append(value)
        return value

    def step(self, inputs: dict[str, np.ndarray], *, session: int = 0) -> float:
        """Run one step on ``inputs`` (the batch) with attached session ``session``; returns
        the loss. State stays bound."""
        runner, bindings = self._sessions[session]
        binding, buffers = bindings[self._current], self._inputs[session]
        for name, array in inputs.items():
            target = buffers.get(name)
            if target is None:
                binding.bind_cpu_input(name, array)
            elif target.shape == array.shape:
                np.copyto(target, array, casting="same_kind")
            else:  # np.copyto would broadcast a wrong-sized batch without a word
                raise FedgeError(
                    f"input '{name}' has shape {list(array.shape)}; this session is fixed "
                    f"to {list(target.shape)}"
                )
        runner.run_with_iobinding(binding)
        self._current = 1 - self._current
        return float(self._loss)

    def current(self, name: str) -> np.ndarray:
        """The live buffer holding ``name``'s current value (overwritten by later steps)."""
        return self._buffers[self._current][name]

    def names(self) -> list[str]:
        return list(self._buffers[0])

    def reset(self, state: dict[str, np.ndarray], lr: np.ndarray) -> None:
        """Start again from ``state`` (every slot) and ``lr``, keeping the session and its
        bindings: the values are copied into the bound buffers, nothing is re-bound."""
        missing = sorted(set(self._buffers[0]) - set(state))
        if missing:
            raise FedgeError(f"reset needs a value for every state slot; missing: {missing[:5]}")
        for name in self._buffers[0]:
            self.assign(name, state[name])
        np.copyto(self._lr, np.asarray(lr, dtype=np.float32))

    def assign(self, name: str, value: np.ndarray) -> None:
        """Overwrite ``name``'s current value in place (shape and dtype as bound)."""
        target = self._buffers[self._current][name]
        if tuple(target.shape) != tuple(np.shape(value)):
            raise FedgeError(
                f"parameter '{name}' has shape {list(np.shape(value))}, "
                f"bundle says {list(target.shape)}"
            )
        np.copyto(target, value, casting="same_kind")


def _loss_buffer(session: Any, loss_output: str) -> np.ndarray:
    for out in session.get_outputs():
        if out.name == loss_output:
            if out.shape not in ([], ()) or out.type not in _ORT_DTYPES:
                raise FedgeError(
                    f"the portable step's '{loss_output}' output is {out.type} {out.shape}; "
                    "expected a float scalar: re-export the bundle"
                )
            return np.zeros((), dtype=_ORT_DTYPES[out.type])
    raise FedgeError(f"the portable step has no '{loss_output}' output: re-export the bundle")
