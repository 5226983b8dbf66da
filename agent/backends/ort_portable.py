"""The ``ort-portable`` backend: plain onnxruntime running the bundle's ``portable_step.onnx``.

The step graph takes every state slot (parameters, buffers such as BatchNorm running
statistics, optimizer state), a batch and the learning rate, and returns the loss and the new
state; the state stays bound to the session between steps (``portable_binding.BoundState``:
IO binding, two buffers per slot) and is copied out only by ``get_parameters()``. Full batches
run on a second session of the same graph with the batch axis fixed to the first batch's size
(``add_free_dimension_override_by_name``: ORT's constant folding then removes the step's shape
computations and picks kernels for known shapes); a shorter last batch runs on the dynamic one. No training
wheel, no torch, no onnx: it runs wherever ``onnxruntime`` has a wheel (Raspberry Pi aarch64,
Python 3.13). Evaluation uses ``inference.onnx`` (eval mode) and computes the loss in numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from fedge.protocol.bundle import Bundle
from fedge.protocol.errors import FedgeError
from fedge.protocol.manifest import PortableStep, StateSlot
from fedge.protocol.ort_runtime import import_onnxruntime, single_thread_session_options
from fedge.protocol.portable_seed import step_seed
from fedge.protocol.sqlite_samples import Features, input_arrays, take_rows
from fedge.protocol.task_metrics import mean_loss, task_metrics
from fedge.protocol.tensors import decode_tensors

from . import portable_epoch as epoch
from .base import EvalResult, Params, TrainingBackend, TrainResult, batches, shape_labels
from .optimizer_choice import OptimizerChoice, OptimizerUnavailable, choose_optimizer
from .portable_binding import BoundState
from .portable_epoch import epoch_model

log = logging.getLogger(__name__)

NAME = "ort-portable"
# Full batches per run of the epoch graph: enough to make the per-run overhead (~50 us) small
# next to the steps, few enough that should_stop (polled between runs) is still heard quickly.
EPOCH_STEPS = 16


class PortableStepMissing(FedgeError):
    """The bundle has no usable portable training step."""


class OrtPortableBackend(TrainingBackend):
    name = NAME

    def __init__(
        self, *, threads: int = 1, static_batch: bool = True, epoch_steps: int = EPOCH_STEPS
    ) -> None:
        self._ort = import_onnxruntime()
        self._static_batch = static_batch  # off: every batch on the dynamic session (A/B)
        # full batches per run of the epoch graph (0: one step per run, the per-step path)
        self._epoch_steps_wanted = epoch_steps if static_batch else 0
        self._epoch_steps = self._epoch_steps_wanted  # 0 for a step without an epoch graph
        self._epoch: int | None = None  # the batch size the epoch graph is attached for
        self._updates: list[tuple[str, str]] = []  # (slot, step output) the step changes
        self._fixed: tuple[int, int] | None = None  # (batch size, attached session index)
        self._batch_axis: str | None = None  # the step's symbolic batch dimension
        self._threads = threads
        self._bundle: Bundle | None = None
        self._session: Any = None
        self._step_file = ""  # the chosen optimizer's step graph
        self._section = PortableStep(False)
        self._state: BoundState | None = None
        self._param_names: list[str] = []
        self._lr = np.float32(0.0)
        self._infer: Any = None
        self._round_seed = 0
        self._steps = 0  # optimizer steps since training began: the dropout seed's counter
        self.optimizer_choice: OptimizerChoice | None = None
        # what the session was opened for (bundle root, content hash, step file, weight decay)
        self._key: tuple[str, str, str, float] | None = None
        self._fresh_values: dict[str, np.ndarray] = {}  # its starting state (BoundState copies)

    def load(
        self,
        bundle: Bundle,
        *,
        learning_rate: float | None = None,
        optimizer: str = "",
        weight_decay: float | None = None,
    ) -> None:
        section = bundle.manifest.portable
        if NAME not in bundle.manifest.backends or section is None or not section.available:
            reason = section.reason if section is not None else None
            raise PortableStepMissing(
                f"bundle '{bundle.model_name}' has no portable training step "
                f"({reason or 'it was exported before the portable step existed'}); "
                "use backend = 'ort-training' on a device with onnxruntime-training-cpu"
            )
        choice = choose_optimizer(
            bundle, optimizer=optimizer, learning_rate=learning_rate, weight_decay=weight_decay
        )
        step_file = bundle.manifest.optimizer_file(choice.spec, NAME)
        self._lr = np.array(choice.learning_rate, dtype=np.float32)
        key = (str(bundle.root), bundle.content_hash, step_file, choice.weight_decay)
        if self._state is not None and self._key == key:
            # Same bundle and optimizer as last round: keep the session and its bindings, start
            # the state again from the bundle's values with zeroed optimizer slots (what a new
            # load does).
            self._state.reset(self._fresh_values, self._lr)
        else:
            self._open(bundle, section, step_file, choice)
            self._key = key
        self._bundle = bundle
        self._infer = None
        self.optimizer_choice = choice

    def _open(
        self, bundle: Bundle, section: PortableStep, step_file: str, choice: OptimizerChoice
    ) -> None:
        self._state = None  # one session at a time
        self._step_file = step_file
        self._session = self._new_session(bundle)
        self._fixed = None  # the fixed-batch session is attached at the first batch
        self._epoch = None  # and the epoch graph at the first training with full batches
        self._epoch_steps = self._epoch_steps_wanted
        self._batch_axis = _batch_axis(self._session, section.input_name)
        # the chosen step reads the slots that are not optimizer state, and its own
        slots = [s for s in section.state if _reads(s.kind, s.name, choice.type)]
        self._section = section
        self._param_names = [p.name for p in bundle.parameter_specs]
        self._fresh_values = self._initial_state(bundle, section, slots)
        self._fresh_values.update(self._weight_decay_input(section, choice))
        # (state slot, graph output with its new value) for every slot a step changes
        self._updates = [(s.name, s.output) for s in slots if s.output]
        self._state = BoundState(
            self._ort,
            self._session,
            self._fresh_values,
            updates=self._updates,
            lr=self._lr,
            lr_input=section.lr_name,
        )

    @staticmethod
    def _weight_decay_input(section: PortableStep, choice: OptimizerChoice) -> Params:
        """AdamW's weight decay, a constant input of its step (bound like a frozen slot)."""
        if choice.type != "adamw":
            return {}
        if section.weight_decay_name:
            return {section.weight_decay_name: np.array(choice.weight_decay, dtype=np.float32)}
        if choice.weight_decay != choice.spec.weight_decay:
            raise OptimizerUnavailable(
                f"the round asks for weight_decay {choice.weight_decay:g}; this bundle's portable "
                f"AdamW step has {choice.spec.weight_decay:g} built in (exported before the "
                "round could choose it): re-export the bundle, or leave weight_decay unset"
            )
        return {}

    def _new_session(self, bundle: Bundle, *, batch: int | None = None) -> Any:
        """A session of the chosen step; ``batch``: with the batch axis fixed to it (ORT then
        constant-folds the shape computations)."""
        so = single_thread_session_options(self._ort, self._threads)
        if batch is not None and self._batch_axis is not None:
            so.add_free_dimension_override_by_name(self._batch_axis, batch)
        return self._ort.InferenceSession(
            str(bundle.file(self._step_file)), sess_options=so, providers=["CPUExecutionProvider"]
        )

    def _session_for(self, inputs: dict[str, np.ndarray]) -> int:
        """The attached session to run ``inputs`` on (0: the dynamic one).

        The first batch a loaded step sees sets the fixed size (the configured batch size: the
        loop's batches are full except the last); a fixed-size session is built for it once.
        """
        batch = len(inputs[self._section.input_name])
        if self._fixed is None and self._static_batch and self._batch_axis is not None:
            fixed = self._new_session(self._loaded(), batch=batch)
            self._fixed = (batch, self._bound().attach(fixed, inputs=inputs))
        if self._fixed is not None and self._fixed[0] == batch:
            return self._fixed[1]
        return 0

    def _initial_state(
        self, bundle: Bundle, section: PortableStep, slots: list[StateSlot]
    ) -> dict[str, np.ndarray]:
        """Fresh state: bundle parameters, exported buffers, zeroed optimizer slots."""
        values: dict[str, np.ndarray] = dict(bundle.initial_parameters())
        if section.buffers_file:
            buffers = decode_tensors(bundle.file(section.buffers_file).read_bytes())
            values = {**buffers, **values}
        state = {}
        for slot in slots:
            name, shape, dtype = slot.name, tuple(slot.shape), np.dtype(slot.dtype)
            if slot.kind == "optimizer":
                state[name] = np.zeros(shape, dtype=dtype)
            elif name in values:
                state[name] = np.asarray(values[name], dtype=dtype, order="C")
            else:
                raise PortableStepMissing(f"bundle holds no initial value for '{name}'")
            if state[name].shape != shape:
                raise PortableStepMissing(
                    f"'{name}' is {list(state[name].shape)} in the bundle, step expects {list(shape)}"
                )
        return state

    def _loaded(self) -> Bundle:
        if self._bundle is None:
            raise FedgeError(f"{self.name}: load a bundle first (backend.load(bundle))")
        return self._bundle

    def _bound(self) -> BoundState:
        if self._state is None:
            raise FedgeError(f"{self.name}: load a bundle first (backend.load(bundle))")
        return self._state

    def set_parameters(self, params: Params) -> None:
        state = self._bound()
        unknown = sorted(set(params) - set(state.names()))
        if unknown:
            raise FedgeError(f"parameters not in this bundle's portable step: {unknown[:5]}")
        for name, value in params.items():
            state.assign(name, value)
        self._infer = None

    def get_parameters(self) -> Params:
        state = self._bound()
        names = set(state.names())
        return {n: state.current(n).copy() for n in self._param_names if n in names}

    def _begin_training(self, seed: int = 0) -> None:
        self._infer = None
        self._round_seed, self._steps = seed, 0

    def train(
        self,
        x: Features,
        y: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        seed: int,
        should_stop: Callable[[], str] = lambda: "",
        proximal_mu: float = 0.0,
        anchor: Params | None = None,
    ) -> TrainResult:
        """The shared loop's result, with full batches run ``epoch_steps`` at a time through
        the epoch graph (``portable_epoch.py``); ``should_stop`` is polled between runs.

        FedProx (a pull after every step) and a step graph the epoch graph cannot be built
        from take the shared per-step loop."""
        # (no full batch at all: nothing for the epoch graph, so no session built for it)
        if proximal_mu > 0 and anchor or len(y) < batch_size or not self._epoch_ready(batch_size):
            return super().train(
                x, y, epochs=epochs, batch_size=batch_size, seed=seed,
                should_stop=should_stop, proximal_mu=proximal_mu, anchor=anchor,
            )  # fmt: skip
        self._begin_training(seed)
        rng = np.random.default_rng(seed)
        total, steps, seen = 0.0, 0, 0
        for _ in range(epochs):
            order = batches(len(y), batch_size, rng)
            full = len(order) - (len(order[-1]) < batch_size if order else 0)
            runs = [
                order[i : min(i + self._epoch_steps, full)]
                for i in range(0, full, self._epoch_steps)
            ]
            runs += [[idx] for idx in order[full:]]  # the short last batch: one dynamic step
            for run in runs:
                reason = should_stop()
                if reason:
                    return TrainResult(total / max(steps, 1), steps, seen, stopped=reason)
                if len(run[0]) == batch_size:
                    losses = self._train_steps(x, y, run)
                    total += sum(float(loss) for loss in losses)
                else:
                    inputs = self._step_inputs(take_rows(x, run[0]), y[run[0]])
                    total += self._bound().step(inputs, session=0)
                steps += len(run)
                seen += sum(len(idx) for idx in run)
        return TrainResult(total / max(steps, 1), steps, seen)

    def _epoch_ready(self, batch_size: int) -> bool:
        """Whether the epoch graph for ``batch_size`` is attached (built here if not)."""
        if self._epoch_steps <= 0 or self._batch_axis is None:
            return False
        if self._epoch == batch_size:
            return True
        section = self._section
        step_inputs = {v.name: v for v in self._session.get_inputs()}
        per_step = [step_inputs[n] for n in (*section.input_names, section.label_name)]
        if section.seed_name:
            per_step.append(step_inputs[section.seed_name])
        try:
            graph = epoch_model(
                self._loaded().file(self._step_file).read_bytes(),
                updates=self._updates,
                per_step=per_step,
            )
            so = single_thread_session_options(self._ort, self._threads)
            so.add_free_dimension_override_by_name(self._batch_axis, batch_size)
            session = self._ort.InferenceSession(
                graph, sess_options=so, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types; per step still works
            log.warning("no epoch graph for this step (%s); training one step per run", exc)
            self._epoch_steps = 0
            return False
        self._bound().attach_epoch(session)
        self._epoch = batch_size
        return True

    def _train_steps(self, x: Features, y: np.ndarray, run: list[np.ndarray]) -> np.ndarray:
        """``len(run)`` optimizer steps (full batches) in one run of the epoch graph."""
        section, manifest = self._section, self._loaded().manifest
        count, size = len(run), len(run[0])
        rows = np.concatenate(run)
        inputs = {epoch.STEPS: np.array(count, dtype=np.int64)}
        for name, a, spec in zip(
            section.input_names, input_arrays(take_rows(x, rows)), manifest.inputs, strict=True
        ):
            inputs[epoch.per_step_name(name)] = np.ascontiguousarray(
                a.reshape(count, size, *a.shape[1:]), dtype=spec.dtype
            )
        labels = shape_labels(y[rows], manifest.label)
        inputs[epoch.per_step_name(section.label_name)] = np.ascontiguousarray(
            labels.reshape(count, size, *labels.shape[1:])
        )
        if section.seed_name:  # one dropout seed per step, as the per-step path feeds them
            seeds = [step_seed(self._round_seed, self._steps + i) for i in range(count)]
            inputs[epoch.per_step_name(section.seed_name)] = np.array(seeds, dtype=np.int64)
        self._steps += count
        return self._bound().run_epoch(inputs)

    def _step_inputs(self, x: Features, y: np.ndarray) -> dict[str, np.ndarray]:
        section = self._section
        manifest = self._loaded().manifest
        inputs = {
            name: np.ascontiguousarray(a, dtype=spec.dtype)
            for name, a, spec in zip(
                section.input_names, input_arrays(x), manifest.inputs, strict=True
            )
        }
        inputs[section.label_name] = np.ascontiguousarray(shape_labels(y, manifest.label))
        if section.seed_name:  # dropout masks: reproducible from the round's seed
            inputs[section.seed_name] = np.array(
                step_seed(self._round_seed, self._steps), dtype=np.int64
            )
        self._steps += 1
        return inputs

    def _train_step(self, x: Features, y: np.ndarray) -> float:
        inputs = self._step_inputs(x, y)
        return self._bound().step(inputs, session=self._session_for(inputs))

    def _trainable_names(self) -> list[str]:
        return list(self._loaded().trainable_names)

    def _learning_rate(self) -> float:
        return float(self._lr)

    def _parameter(self, name: str) -> np.ndarray:
        return self._bound().current(name)

    def _set_parameter(self, name: str, value: np.ndarray) -> None:
        self._bound().assign(name, value)

    def evaluate(self, x: Features, y: np.ndarray, *, batch_size: int = 256) -> EvalResult:
        if len(y) == 0:
            return EvalResult(float("nan"), None, 0)
        manifest = self._loaded().manifest
        total, outputs = 0.0, []
        for i in range(0, len(y), batch_size):
            xb = take_rows(x, slice(i, i + batch_size))
            yb = shape_labels(y[i : i + batch_size], manifest.label)
            out = self._forward(xb)
            total += mean_loss(manifest.loss.type, out, yb) * len(yb)
            outputs.append(out)
        metrics = task_metrics(manifest.task, np.concatenate(outputs), y)
        return EvalResult(total / len(y), metrics.get("accuracy"), len(y), metrics)

    def _forward(self, xb: Features) -> np.ndarray:
        if self._infer is None:
            self._infer = _EvalSession(self._ort, self._loaded(), self._eval_state(), self._threads)
        return self._infer.run(xb)

    def _eval_state(self) -> Params:
        """Parameters and buffers (e.g. BN running statistics) the inference graph reads."""
        kinds = ("parameter", "frozen", "buffer")
        names = [s.name for s in self._section.state if s.kind in kinds]
        # copies: the eval session reads these buffers for its lifetime, training rewrites them
        return {n: self._bound().current(n).copy() for n in names}


def _reads(kind: str, name: str, optimizer: str) -> bool:
    """Whether the step of ``optimizer`` reads this slot (optimizer slots: ``<type>/...``)."""
    return kind != "optimizer" or name.startswith(f"{optimizer}/")


def _batch_axis(session: Any, input_name: str) -> str | None:
    """The name of the step's symbolic batch dimension (None: the step's batch is fixed)."""
    for value in session.get_inputs():
        if value.name == input_name and value.shape and isinstance(value.shape[0], str):
            return value.shape[0]
    return None


class _EvalSession:
    """``inference.onnx`` with its initializers replaced by the current state (by name).

    Graph optimizations fold the graph's own initializers before ``add_initializer`` overrides
    apply (Conv+BatchNorm fusion at the basic level, NCHWc weight re-packing at the full level),
    so a CNN would be evaluated with the exported weights: they stay off here.
    """

    def __init__(self, ort: Any, bundle: Bundle, state: Params, threads: int) -> None:
        so = single_thread_session_options(ort, threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self._values = []  # add_initializer keeps references: hold them as long as the session
        for name, value in state.items():
            ov = ort.OrtValue.ortvalue_from_numpy(np.asarray(value, order="C"))
            self._values.append(ov)
            so.add_initializer(name, ov)
        self._session = ort.InferenceSession(
            str(bundle.file("inference.onnx")), sess_options=so, providers=["CPUExecutionProvider"]
        )
        # the model's inputs in graph order (parameters are overridable initializers, which
        # get_inputs() leaves out), each in the manifest's dtype
        names = [i.name for i in self._session.get_inputs()]
        dtypes = [np.dtype(s.dtype) for s in bundle.manifest.inputs]
        self._inputs = list(zip(names, dtypes, strict=True))

    def run(self, x: Features) -> np.ndarray:
        feeds = {
            name: np.ascontiguousarray(a, dtype=dtype)
            for (name, dtype), a in zip(self._inputs, input_arrays(x), strict=True)
        }
        return self._session.run(None, feeds)[0]
