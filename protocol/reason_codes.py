"""Free-text reasons mapped to small, fixed sets of codes: the only label values metrics carry
(orchestrator and agent alike).

Reasons are written for people ("update norm 12.3 exceeds the bound 5", "on battery at 12% <
20%") and contain numbers, names and device ids: as Prometheus label values they would make a
new time series per message. Each function here returns one code from a closed tuple, so a
label's cardinality is known in advance. Pure functions; the first matching rule wins.
"""

from __future__ import annotations

# why the orchestrator refused an update (intake.py and validation.py wording)
REJECTION_CODES: tuple[str, ...] = (
    "not_selected",
    "stale_model_version",
    "evaluation_round",
    "too_large",
    "malformed",
    "non_finite",
    "parameter_names",
    "shape_mismatch",
    "dtype_mismatch",
    "norm_bound",
    "other",
)

# why a device cannot be selected now (registry.why_not_eligible and agent/eligibility.py)
ELIGIBILITY_CODES: tuple[str, ...] = (
    "eligible",
    "offline",
    "not_targeted",
    "override",
    "cpu_busy",
    "on_battery",
    "battery_low",
    "too_hot",
    "outside_window",
    "daily_budget",
    "data_problem",
    "other",
)

# why an invited device gave up on a round (agent/daemon.py's RoundAbort reasons)
ABORT_CODES: tuple[str, ...] = (
    "not_eligible",
    "bundle_refused",
    "data_problem",
    "training_failed",
    "agent_stopping",
    "other",
)

_REJECTION_RULES: tuple[tuple[str, str], ...] = (
    ("inline delta", "malformed"),  # fails its sha256/size check, or not base64
    ("not selected", "not_selected"),
    ("the round trains v", "stale_model_version"),
    ("federated evaluation round", "evaluation_round"),
    ("limit", "too_large"),
    ("too large", "too_large"),
    ("non-finite", "non_finite"),
    ("parameter names differ", "parameter_names"),
    ("has shape", "shape_mismatch"),
    ("has dtype", "dtype_mismatch"),
    ("exceeds the bound", "norm_bound"),
    ("chunks", "malformed"),
    ("decode", "malformed"),
    ("safetensors", "malformed"),
    ("header", "malformed"),
    ("compress", "malformed"),
)

_ELIGIBILITY_RULES: tuple[tuple[str, str], ...] = (
    ("override", "override"),
    ("cpu busy", "cpu_busy"),
    ("cpu idle for", "cpu_busy"),
    ("require_ac", "on_battery"),
    ("on battery at", "battery_low"),
    ("too hot", "too_hot"),
    ("outside the training windows", "outside_window"),
    ("daily training budget", "daily_budget"),
    ("data", "data_problem"),
    ("table", "data_problem"),
    ("rows", "data_problem"),
)

_ABORT_RULES: tuple[tuple[str, str], ...] = (
    ("eligible", "not_eligible"),
    ("bundle refused", "bundle_refused"),
    ("local data problem", "data_problem"),
    ("training failed", "training_failed"),
    ("stopping", "agent_stopping"),
)


def _first_match(text: str, rules: tuple[tuple[str, str], ...]) -> str:
    low = text.lower()
    for needle, code in rules:
        if needle in low:
            return code
    return "other"


def rejection_code(reason: str) -> str:
    """The code of an update's rejection reason, e.g. ``"norm_bound"``; ``"other"`` if unknown."""
    return _first_match(reason, _REJECTION_RULES)


def abort_code(reason: str) -> str:
    """The code of a device's RoundAbort reason, e.g. ``"training_failed"``."""
    return _first_match(reason, _ABORT_RULES)


def eligibility_code(state: str, eligible: bool, reason: str, targeted: bool) -> str:
    """One device's eligibility as a code, in the order ``registry.why_not_eligible`` checks."""
    if state == "offline":
        return "offline"
    if state == "ineligible" or not eligible:
        return _first_match(reason, _ELIGIBILITY_RULES)
    if not targeted:
        return "not_targeted"
    return "eligible"
