"""Client-side DP-SGD (Opacus) with the privacy budget accounted across rounds.

A Flower client process may be fresh every round, so the accountant's state is
carried as plain lists (:meth:`PrivacyBudget.to_record` /
:meth:`PrivacyBudget.from_record`, which fit a Flower ``ConfigRecord``) and fed back
to :func:`make_private` as ``history`` the next round. Composition over the rounds is
then exact: the accountant sees every ``(noise_multiplier, sample_rate, steps)``
segment this client ever trained with.

Gotchas
-------
- The returned model is Opacus' ``GradSampleModule``; its ``state_dict()`` keys are
  prefixed with ``_module.``. Read the parameters to upload from the *original*
  module passed in (it shares the parameter tensors), or call
  ``model.to_standard_module()`` after training, which also removes Opacus' hooks and
  ``grad_sample`` attributes (needed before wrapping the same module again).
- Opacus warns "Secure RNG turned off" on every ``PrivacyEngine``; that one warning
  is silenced inside :func:`make_private` (``secure_mode=False`` is deliberate for
  simulation; secure mode needs ``torchcsprng``). During training, torch warns
  "Full backward hook is firing when gradients are computed with respect to module
  outputs since no inputs require gradients" (Opacus' per-sample hooks on the first
  layer; harmless). It fires in the caller's ``backward()``, so it is not filtered
  here: call :func:`silence_opacus_warnings` once in the client process to install
  targeted ``ignore`` filters for both.
- Opacus' accountants merge consecutive segments with the same noise multiplier and
  sample rate, so the history of two identical rounds is one entry with the steps
  summed; the epsilon is the same.
- Poisson sampling: ``sample_rate = 1 / len(data_loader)``, batches have a random
  size, and the number of steps per epoch is ``len(data_loader)``.

Noise multipliers for a typical client: 3000 examples, batch 32, so ``q = 1/94`` and
94 steps per epoch; 1 epoch per round, 10 rounds = 940 steps; ``delta = 1e-5``.
``noise_for_epsilon(eps, 1/94, 940)`` gives sigma = 1.553 / 0.876 / 0.621 (RDP) and
1.465 / 0.826 / 0.592 (PRV) for eps = 1 / 3 / 8; rounded up to two decimals
(checked by ``tests/training/test_training_privacy.py`` for RDP)::

    target eps | sigma (RDP) | eps, 10 rounds | eps, 1 round || sigma (PRV) | eps, 10 r.
    -----------+-------------+----------------+--------------++-------------+-----------
        1      |    1.56     |      0.99      |     0.44     ||    1.47     |   0.99
        3      |    0.88     |      2.97      |     1.73     ||    0.83     |   2.96
        8      |    0.63     |      7.67      |     4.30     ||    0.60     |   7.67

Composition is sub-linear: after 1 of the 10 rounds a client has already spent
roughly half of its 10-round epsilon.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import IAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader

__all__ = [
    "DPConfig",
    "PrivacyBudget",
    "epsilon_for",
    "client_noise",
    "make_private",
    "noise_for_epsilon",
    "silence_opacus_warnings",
]

HistoryEntry = tuple[float, float, int]
_ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")
_SECURE_RNG_MSG = "Secure RNG turned off"
_BACKWARD_HOOK_MSG = "Full backward hook is firing when gradients are computed"


def silence_opacus_warnings() -> None:
    """Install process-wide ``ignore`` filters for Opacus' two harmless warnings.

    Targets only the "Secure RNG turned off" and torch's "Full backward hook is
    firing when gradients are computed ..." ``UserWarning`` messages.
    """
    for msg in (_SECURE_RNG_MSG, _BACKWARD_HOOK_MSG):
        warnings.filterwarnings("ignore", message=msg, category=UserWarning)


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings of one client.

    Attributes
    ----------
    noise_multiplier : float
        Gaussian noise std relative to ``max_grad_norm`` (``>= 0``; ``0`` clips
        without noise and gives ``epsilon = inf``).
    max_grad_norm : float
        Per-example gradient clipping norm, default 1.0.
    delta : float
        Target delta used by :meth:`PrivacyBudget.epsilon`, default 1e-5.
    accountant : str
        ``"rdp"`` (default; fast, deterministic) or ``"prv"`` (tighter, slower).
    grad_sample_mode : str
        How Opacus computes per-example gradients: ``"hooks"`` (default; module
        hooks), ``"functorch"`` (``torch.func.vmap``) or ``"ew"`` (torch's expanded
        weights). Same gradients, different CPU cost (``experiments/dp_cost.py``).
    """

    noise_multiplier: float
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    grad_sample_mode: str = "hooks"

    def __post_init__(self) -> None:
        if not self.noise_multiplier >= 0.0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if not self.max_grad_norm > 0.0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.accountant not in _ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {_ACCOUNTANTS}, got {self.accountant!r}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {self.grad_sample_mode!r}")


def _normalise(history: Iterable[Iterable[float | int]]) -> list[HistoryEntry]:
    out: list[HistoryEntry] = []
    for entry in history:
        noise, rate, steps = entry
        if int(steps) != steps or steps < 0 or not 0.0 < rate <= 1.0 or noise < 0:
            raise ValueError(f"invalid history entry {tuple(entry)!r}")
        out.append((float(noise), float(rate), int(steps)))
    return out


class PrivacyBudget:
    """Privacy spent by one client over all its rounds.

    Wraps an Opacus accountant. The instance returned by :func:`make_private` is
    live: its :attr:`history` and :meth:`epsilon` include the steps the private
    optimizer has taken so far in this round.

    Parameters
    ----------
    history : iterable of (float, float, int), optional
        ``(noise_multiplier, sample_rate, steps)`` segments spent before.
    accountant : str or opacus.accountants.IAccountant, optional
        ``"rdp"`` (default), ``"prv"``, or an accountant instance to wrap (its
        history is replaced by ``history`` only when ``history`` is given).
    delta : float, optional
        Default delta of :meth:`epsilon`, 1e-5.
    """

    def __init__(
        self,
        history: Iterable[Iterable[float | int]] | None = None,
        *,
        accountant: str | IAccountant = "rdp",
        delta: float = 1e-5,
    ) -> None:
        if isinstance(accountant, str):
            if accountant not in _ACCOUNTANTS:
                raise ValueError(f"accountant must be one of {_ACCOUNTANTS}, got {accountant!r}")
            accountant = create_accountant(mechanism=accountant)
        self._accountant = accountant
        self.delta = float(delta)
        if history is not None:
            self._accountant.history = _normalise(history)

    @property
    def mechanism(self) -> str:
        """Name of the accountant, ``"rdp"`` or ``"prv"``."""
        return str(self._accountant.mechanism())

    @property
    def history(self) -> list[HistoryEntry]:
        """Copy of ``(noise_multiplier, sample_rate, steps)`` segments, oldest first."""
        return _normalise(self._accountant.history)

    @property
    def steps(self) -> int:
        """Total number of noisy optimizer steps accounted."""
        return sum(s for _, _, s in self.history)

    def epsilon(self, delta: float | None = None) -> float:
        """Return the epsilon spent so far at ``delta`` (default: the budget's delta).

        ``0.0`` when nothing was spent; ``inf`` when a segment had no noise.
        """
        if not any(s > 0 for _, _, s in self._accountant.history):
            return 0.0
        if any(n == 0.0 and s > 0 for n, _, s in self._accountant.history):
            return float("inf")
        d = self.delta if delta is None else float(delta)
        return float(self._accountant.get_epsilon(delta=d))

    def to_record(self) -> dict[str, list]:
        """Plain-list form for a Flower ``ConfigRecord``.

        Keys: ``noise`` (float), ``sample_rate`` (float), ``steps`` (int), one item
        per segment, plus ``accountant`` (``[name]``) and ``delta`` (``[delta]``).
        """
        hist = self.history
        return {
            "noise": [n for n, _, _ in hist],
            "sample_rate": [q for _, q, _ in hist],
            "steps": [s for _, _, s in hist],
            "accountant": [self.mechanism],
            "delta": [self.delta],
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, object]) -> PrivacyBudget:
        """Rebuild a budget from :meth:`to_record` output (a dict or ``ConfigRecord``).

        Missing ``accountant`` / ``delta`` default to ``"rdp"`` / ``1e-5``; an empty
        record (``{}``) is an empty budget.
        """
        noise = list(rec.get("noise", []))  # type: ignore[call-overload]
        rate = list(rec.get("sample_rate", []))  # type: ignore[call-overload]
        steps = list(rec.get("steps", []))  # type: ignore[call-overload]
        if not len(noise) == len(rate) == len(steps):
            raise ValueError("record lists noise/sample_rate/steps differ in length")
        acc = list(rec.get("accountant", ["rdp"]))  # type: ignore[call-overload]
        delta = list(rec.get("delta", [1e-5]))  # type: ignore[call-overload]
        return cls(
            list(zip(noise, rate, steps)),
            accountant=str(acc[0]) if acc else "rdp",
            delta=float(delta[0]) if delta else 1e-5,
        )

    def __repr__(self) -> str:
        return f"PrivacyBudget(mechanism={self.mechanism!r}, history={self.history!r})"


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    config: DPConfig,
    *,
    history: Iterable[Iterable[float | int]] | None = None,
    seed: int | None = None,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader, PrivacyBudget]:
    """Wrap model, optimizer and loader for DP-SGD, continuing a prior budget.

    Parameters
    ----------
    model : torch.nn.Module
        The client's model; its parameters are shared with the returned wrapper.
    optimizer : torch.optim.Optimizer
        Optimizer over ``model``'s parameters.
    data_loader : DataLoader
        Map-style loader; replaced by a Poisson-sampling ``DPDataLoader`` with
        ``sample_rate = 1 / len(data_loader)``.
    config : DPConfig
        Noise, clipping, delta and accountant.
    history : iterable of (float, float, int), optional
        Segments spent in earlier rounds (``PrivacyBudget.history`` or
        ``PrivacyBudget.from_record(rec).history``).
    seed : int, optional
        Seeds both the Poisson sampling and the DP noise (reproducible, not
        cryptographically secure). Without it, the sampling uses
        ``data_loader.generator`` (or torch's global RNG) and the noise torch's
        global RNG.

    Returns
    -------
    tuple
        ``(GradSampleModule, DPOptimizer, DPDataLoader, PrivacyBudget)``. The budget
        is live and counts this round's steps as the optimizer takes them. Read
        trained parameters from the original ``model`` (no ``_module.`` prefix).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SECURE_RNG_MSG, category=UserWarning)
        engine = PrivacyEngine(accountant=config.accountant, secure_mode=False)
    budget = PrivacyBudget(history, accountant=engine.accountant, delta=config.delta)

    sample_gen = noise_gen = None
    if seed is not None:
        s1, s2 = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
        sample_gen = torch.Generator().manual_seed(int(s1) >> 1)  # indices are drawn on the CPU
        # the noise is drawn where the gradients are (a CPU generator fails on CUDA)
        device = next(model.parameters()).device
        noise_gen = torch.Generator(device=device).manual_seed(int(s2) >> 1)
    # Wrap the loader ourselves (same as Opacus' poisson_sampling=True path) so the
    # sampling generator can be seeded.
    dp_loader = DPDataLoader.from_data_loader(data_loader, generator=sample_gen)
    gsm, dp_opt, dp_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=dp_loader,
        noise_multiplier=config.noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        poisson_sampling=False,
        noise_generator=noise_gen,
        grad_sample_mode=config.grad_sample_mode,
    )
    gsm.forbid_grad_accumulation()  # what Opacus does under Poisson sampling
    return gsm, dp_opt, dp_loader, budget


def epsilon_for(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float = 1e-5,
    accountant: str = "rdp",
) -> float:
    """Return the epsilon of ``steps`` DP-SGD steps at ``sample_rate`` and noise."""
    return PrivacyBudget(
        [(noise_multiplier, sample_rate, steps)], accountant=accountant, delta=delta
    ).epsilon()


def noise_for_epsilon(
    target_eps: float,
    sample_rate: float,
    steps: int,
    delta: float = 1e-5,
    accountant: str = "rdp",
) -> float:
    """Return the smallest noise multiplier whose ``steps`` steps stay within ``target_eps``.

    Thin wrapper over ``opacus.accountants.utils.get_noise_multiplier`` (binary
    search, epsilon tolerance 0.01). For a whole federation, pass the total steps
    over all rounds, e.g. ``rounds * epochs * len(loader)`` with
    ``sample_rate = 1 / len(loader)``.
    """
    with warnings.catch_warnings():
        # The search probes very large noise first, where RDP's best order is the
        # largest one tried; Opacus warns about that probe, not about the result.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(
            get_noise_multiplier(
                target_epsilon=target_eps,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=int(steps),
                accountant=accountant,
            )
        )


@lru_cache(maxsize=1024)
def client_noise(
    target_eps: float,
    num_examples: int,
    batch_size: int,
    local_epochs: int,
    rounds: int,
    delta: float = 1e-5,
    accountant: str = "rdp",
) -> float:
    """The noise multiplier with which one client spends ``target_eps`` over the whole run.

    The privacy unit is one training example of this client; what composes is every
    DP-SGD step the client takes in all ``rounds`` rounds. With Poisson sampling at
    ``q = 1 / ceil(num_examples / batch_size)`` (what :func:`make_private` uses) the
    client takes ``ceil(num_examples / batch_size)`` steps per epoch, so exactly the
    segments its accountant will see are searched here: after the last round its
    epsilon is at most ``target_eps`` (Opacus' search stops within 0.01 below it).

    Parameters
    ----------
    target_eps : float
        Epsilon to spend over all rounds (``> 0``; ``inf`` gives 0, i.e. no DP).
    num_examples : int
        The client's training examples.
    batch_size : int
        Expected Poisson batch size.
    local_epochs : int
        Epochs per round.
    rounds : int
        Rounds this client trains in (a client drawn every round: all of them).
    delta : float
        Default 1e-5.
    accountant : str
        ``"rdp"`` (default) or ``"prv"``.
    """
    if math.isinf(target_eps):
        return 0.0
    if not target_eps > 0:
        raise ValueError(f"target_eps must be > 0, got {target_eps}")
    per_epoch = max(1, math.ceil(num_examples / batch_size))
    return noise_for_epsilon(target_eps, 1.0 / per_epoch, per_epoch * local_epochs * rounds, delta, accountant)
