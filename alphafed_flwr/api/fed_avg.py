"""``FedAvgScheduler`` and ``FedSGDScheduler`` (pure torch; importable as ``alphafed.fed_avg``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from .errors import ConfigError
from .log import logger
from .metrics import register_metrics
from .scheduler import TEST_METHODS, Scheduler, _check_int, call_user

__all__ = ["FedAvgScheduler", "FedSGDScheduler", "register_metrics"]

LoaderHook = Callable[[DataLoader], DataLoader]


class FedAvgScheduler(Scheduler):
    """Horizontal federated averaging.

    Parameters
    ----------
    min_clients : int
        Fewest clients a round may use (default 1; AlphaFed 0.4.x had no such argument).
    max_clients : int | None
        Most clients a round may use (``None``: every available client).
    name : str | None
        Task name; defaults to the task id.
    max_rounds : int
        Rounds to run; 0 means a single round.
    merge_epochs : int
        Local epochs per round (``train_an_epoch`` calls).
    calculation_timeout : int
        Seconds a client's local work in one round may take; later results are dropped.
    schedule_timeout : int
        Seconds to wait for ``min_clients`` clients to be available.
    log_rounds : int
        Test every ``log_rounds`` rounds; the first and last round are always tested.
    is_centralized : bool
        ``False`` (AlphaFed's elected aggregator) is accepted with a warning: Flower always
        aggregates at the server.
    involve_aggregator : bool
        The server also trains on its own data as one more participant.
    """

    REQUIRED_METHODS = (
        "build_model",
        "build_optimizer",
        "build_train_dataloader",
        "build_test_dataloader",
        "train_an_epoch",
        TEST_METHODS,
    )

    def __init__(
        self,
        min_clients: int = 1,
        max_clients: int | None = None,
        name: str | None = None,
        max_rounds: int = 0,
        merge_epochs: int = 1,
        calculation_timeout: int = 300,
        schedule_timeout: int = 30,
        log_rounds: int = 0,
        is_centralized: bool = True,
        involve_aggregator: bool = False,
    ) -> None:
        super().__init__(
            name=name,
            max_rounds=max_rounds,
            calculation_timeout=calculation_timeout,
            schedule_timeout=schedule_timeout,
            log_rounds=log_rounds,
        )
        self.min_clients = _check_int("min_clients", min_clients, 1)
        if max_clients is not None:
            _check_int("max_clients", max_clients, 1)
            if min_clients > max_clients:
                raise ConfigError(
                    f"min_clients ({min_clients}) > max_clients ({max_clients}): "
                    "raise max_clients or lower min_clients"
                )
        self.max_clients = max_clients
        if isinstance(merge_epochs, bool) or not isinstance(merge_epochs, int) or merge_epochs <= 0:
            raise ConfigError(
                f"merge_epochs must be a positive integer (local epochs per round), "
                f"got {merge_epochs!r}"
            )
        self.merge_epochs = merge_epochs
        self.is_centralized = bool(is_centralized)
        self.involve_aggregator = bool(involve_aggregator)
        self._model: nn.Module | None = None
        self._optimizer: Optimizer | None = None
        self._user_train_loader: DataLoader | None = None
        self._test_loader: DataLoader | None = None
        self._loaders: dict[str, DataLoader | None] = {}
        self._train_loader_hook: LoaderHook | None = None
        if not self.is_centralized:
            logger.warning(
                "is_centralized=False: AlphaFed elected an aggregator among the clients each "
                "round; on Flower the server always aggregates (results are the same)."
            )

    # ----- lazy, cached resources ------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The model from ``build_model`` (built once)."""
        return self.lazy("_model", ("build_model",), nn.Module)

    @property
    def optimizer(self) -> Optimizer:
        """The optimizer from ``build_optimizer(model)`` (built once, lives across rounds)."""
        return self.lazy("_optimizer", ("build_optimizer",), Optimizer, self.model)

    @property
    def train_loader(self) -> DataLoader:
        """This party's training loader (in a simulation: its partition)."""
        if "train" not in self._loaders:
            loader = self.user_train_loader()
            self._loaders["train"] = (
                self._train_loader_hook(loader) if self._train_loader_hook else loader
            )
        return self._loaders["train"]  # type: ignore[return-value]

    def user_train_loader(self) -> DataLoader:
        """The training loader exactly as ``build_train_dataloader`` returns it (cached)."""
        return self.lazy("_user_train_loader", ("build_train_dataloader",), DataLoader)

    @property
    def test_loader(self) -> DataLoader:
        """The test loader from ``build_test_dataloader``."""
        return self.lazy("_test_loader", ("build_test_dataloader",), DataLoader)

    @property
    def validation_loader(self) -> DataLoader | None:
        """The loader from ``build_validation_dataloader`` (``None`` by default)."""
        if "validation" not in self._loaders:
            self._loaders["validation"] = call_user(self, "build_validation_dataloader")
        return self._loaders["validation"]

    # ----- optional user methods -------------------------------------------------------
    def build_validation_dataloader(self) -> DataLoader | None:
        """No validation data by default."""
        return None

    def state_dict(self) -> dict[str, Tensor]:
        """The tensors that are averaged (default: the model's state)."""
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load averaged tensors (default: into the model)."""
        self.model.load_state_dict(state_dict)

    def validate_context(self) -> None:
        """Check the configuration; subclasses call ``super().validate_context()`` first."""
        super().validate_context()

    # ----- used by adapters ------------------------------------------------------------
    def apply_round_config(self, config: Mapping[str, Any]) -> None:
        """Take what the strategy sent with a round's training message (its config record)
        before local training. Default: nothing (``FedProxScheduler`` reads ``proximal-mu``).

        Parameters
        ----------
        config : Mapping[str, Any]
            The training message's config record (``server-round`` and strategy keys).
        """
        del config

    def set_train_loader_hook(self, hook: LoaderHook | None) -> None:
        """Transform the user's training loader (for example, to one partition)."""
        self._train_loader_hook = hook
        self._loaders.pop("train", None)

    def reset_optimizer(self) -> None:
        """Forget the optimizer; the next access to ``optimizer`` builds a new one."""
        self._optimizer = None

    def run_local_round(self) -> int:
        """Run ``merge_epochs`` x ``train_an_epoch``; return the number of training samples."""
        for _ in range(self.merge_epochs):
            call_user(self, "train_an_epoch")
        return dataset_size(self.train_loader)


class FedSGDScheduler(FedAvgScheduler):
    """Federated SGD: every available client takes one full-batch step per round.

    The training loader must hold the whole dataset in one batch
    (``batch_size == len(dataset)``); anything else is refused before training starts.

    Parameters
    ----------
    min_clients : int
        Fewest clients a round may use; every available client takes part.
    name, max_rounds, calculation_timeout, schedule_timeout, log_rounds, is_centralized,
    involve_aggregator
        As for ``FedAvgScheduler``.
    """

    def __init__(
        self,
        min_clients: int = 1,
        name: str | None = None,
        max_rounds: int = 0,
        calculation_timeout: int = 300,
        schedule_timeout: int = 30,
        log_rounds: int = 0,
        is_centralized: bool = True,
        involve_aggregator: bool = False,
        **kwargs: Any,
    ) -> None:
        for unsupported in ("max_clients", "merge_epochs"):
            if unsupported in kwargs:
                raise ConfigError(
                    f"FedSGDScheduler takes no {unsupported}: every available client takes "
                    "exactly one full-batch step per round; remove the argument"
                )
        if kwargs:
            raise ConfigError(f"FedSGDScheduler got unexpected arguments {sorted(kwargs)}")
        super().__init__(
            min_clients=min_clients,
            max_clients=None,
            name=name,
            max_rounds=max_rounds,
            merge_epochs=1,
            calculation_timeout=calculation_timeout,
            schedule_timeout=schedule_timeout,
            log_rounds=log_rounds,
            is_centralized=is_centralized,
            involve_aggregator=involve_aggregator,
        )

    def check_full_batch(self) -> tuple[int, int]:
        """Refuse a training loader that is not full-batch; return ``(batch_size, len)``."""
        loader = self.user_train_loader()
        size = dataset_size(loader)
        batch = loader.batch_size
        if batch != size:
            raise ConfigError(
                f"FedSGD needs a full-batch training loader, but "
                f"{type(self).__name__}.build_train_dataloader returns batch_size={batch} "
                f"while its dataset has {size} samples: pass batch_size=len(dataset) "
                f"(here {size}) to the DataLoader"
            )
        return batch, size


def dataset_size(loader: DataLoader) -> int:
    """Number of samples behind a loader (``len(loader.dataset)``)."""
    try:
        return len(loader.dataset)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(
            "the training loader's dataset has no len(); alphafed-flwr weights clients by "
            "sample count and partitions datasets by index, so use a map-style Dataset"
        ) from exc


#: Schedulers of other issues, re-exported lazily so that their modules can replace the
#: placeholders without touching this one (``from alphafed.fed_avg import ...``).
_ELSEWHERE = {
    "DPFedAvgScheduler": "alphafed_flwr.api.dp_fed_avg",
    "SecureFedAvgScheduler": "alphafed_flwr.api.secure_fed_avg",
}


def __getattr__(name: str) -> Any:
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
