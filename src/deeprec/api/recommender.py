"""``Recommender``: deeprec from Python, a DataFrame of ratings in and top-k lists out.

In scikit-learn's manner: the settings go to the constructor (a preset or a Config, with
keyword overrides checked by the Config, the one source of every option), ``fit`` returns
the recommender, and ``get_params``/``set_params`` read and change the settings. It holds
one ModelOnData (deeprec.training.assembly): a Trainer after ``fit``, a loaded Trained after
``load``. ``save`` writes the run folder the commands write, and ``load`` reads the folders
they write, so a model moves freely between a notebook and ``python -m deeprec.X``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm import tqdm

from deeprec import __version__, checkpoint, memory, tensorboard_log
from deeprec.config import Config, ConfigError, load_preset
from deeprec.data import DataError, Dataset, load
from deeprec.data.frames import IN_MEMORY, from_frame, from_sparse, with_validation
from deeprec.distributed import ALONE, World
from deeprec.errors import CheckpointError
from deeprec.inference import ranking, recommendation
from deeprec.inference.onnx_export import export_onnx
from deeprec.inference.trained import Trained, load_trained
from deeprec.quality.evaluation import evaluate
from deeprec.scoring.predict import predict_entries
from deeprec.top_items import top_k
from deeprec.training import ModelOnData, Trainer, console, fit, lifecycle
from deeprec.training.plan import inference_plan
from deeprec.training.run_folder import RunFolder

Ratings = pd.DataFrame | sp.spmatrix | sp.sparray | str | Path
Report = Callable[[str], None]
IN_MEMORY_NAME = "in-memory"  # Config.data of ratings handed over in memory, until saved


def _quiet(_line: str) -> None:
    pass


class Recommender:
    """A deep autoencoder recommender: ``Recommender("topk").fit(ratings).recommend(7)``.

    preset: a shipped recipe (``deeprec.config.presets()``: seed, best, topk, topk-vae);
    config: a Config instead of a preset; options: any Config field over either
    (``epochs=5, fused=True``), checked as the command line checks its flags. device:
    cpu, cuda, cuda:1 or auto. progress: progress bars and one line per epoch.
    """

    def __init__(
        self,
        preset: str = "seed",
        *,
        config: Config | None = None,
        device: str = "auto",
        progress: bool = True,
        **options: Any,
    ) -> None:
        if config is not None and not isinstance(config, Config):
            raise ConfigError(f"config: expected a deeprec Config, got {type(config).__name__}")
        if not isinstance(preset, str):
            raise ConfigError(f"preset: expected a preset name, got {type(preset).__name__}")
        base = config if config is not None else load_preset(preset)
        self._blank(None if config is not None else preset, device, progress)
        self.config = _with_options(base, options)

    def _blank(self, preset: str | None, device: str, progress: bool) -> None:
        """Every attribute, before a config or a model is known."""
        self.preset = preset
        self.device = lifecycle.resolve_device(_text(device, "device"))
        self.progress = _switch(progress, "progress")
        self.config: Config = Config()
        self._core: Trainer | Trained | None = None
        self._dataset: Dataset | None = None  # the ratings it read, kept for save()
        self.folder: Path | None = None  # the run folder it was saved to or loaded from
        # the last epoch's validation metrics, from fit or resume in this session
        self.validation_metrics: dict[str, float] = {}

    def __repr__(self) -> str:
        state = "unfitted" if self._core is None else f"{self.epochs_trained} epochs"
        return f"Recommender({self.preset or 'config'!r}, data={self.config.data!r}, {state})"

    # ------------------------------------------------------------ settings
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Every setting: the Config's fields, the device and progress."""
        return {**self.config.to_dict(), "device": str(self.device), "progress": self.progress}

    def set_params(self, **options: Any) -> Recommender:
        """Change settings (Config fields, device, progress); the model must be fitted again."""
        if "device" in options:
            self.device = lifecycle.resolve_device(_text(options.pop("device"), "device"))
        if "progress" in options:
            self.progress = _switch(options.pop("progress"), "progress")
        self.config = _with_options(self.config, options)
        return self

    # ------------------------------------------------------------ training
    def fit(
        self,
        ratings: Ratings | None = None,
        *,
        validation: pd.DataFrame | None = None,
        titles: Mapping[int, str] | pd.DataFrame | None = None,
        data_dir: str | Path | None = None,
        out: str | Path | None = None,
        overwrite: bool = False,
        save_every: int = 1,
        slim: bool = False,
        tensorboard: str | Path | None = None,
        world: World = ALONE,
        report: Report | None = None,
    ) -> Recommender:
        """Train a fresh model; returns self.

        ratings: a DataFrame (user, item, rating[, timestamp]; MovieLens' userId/movieId
        too), a scipy sparse users x items matrix, or a dataset name or path (None: the
        config's data). validation: held-out ratings (a DataFrame as ratings); without it
        the config's split (``split=``, ``quantile=``, ``val_frac=``) makes one. titles:
        {item id: title} or a DataFrame of movieId/item and title. out: train into this
        run folder as ``python -m deeprec.train --out`` does (a checkpoint per
        ``save_every`` epochs; Ctrl-C keeps the finished epochs); without it the model
        lives in memory until ``save``.
        """
        say = report if report is not None else (tqdm.write if self.progress else _quiet)
        overwrite, slim = _switch(overwrite, "overwrite"), _switch(slim, "slim")
        save_every = _positive(save_every, "save_every")
        data_dir = _dir(data_dir)
        _board(tensorboard)
        config, dataset = self._data(ratings, validation, titles)
        self._dataset, self.folder = dataset, None
        if out is None and not world.active:
            if dataset is None:
                dataset = load(config.data, data_dir, config.scale_range())
                self._dataset = dataset
            trainer = lifecycle.in_memory(config, dataset, self.device)
            self._core, self.config = trainer, trainer.config
            _start_lines(say, dataset, trainer, self.device)
            try:
                self.validation_metrics = fit(trainer, [console(say)], quiet=not self.progress)
            finally:
                trainer.model.eval()
            return self
        run = lifecycle.start(config, data_dir, self.device, _opt_path(out, "out"), world,
                              overwrite, carry=dataset)  # fmt: skip
        self._dataset = None  # read back from the run folder from here on
        self._core, self.config, self.folder = run.trainer, run.config, run.folder.path
        self._train(run, say, save_every, slim, tensorboard)
        return self

    @classmethod
    def resume(
        cls,
        path: str | Path,
        *,
        epochs: int | None = None,
        data_dir: str | Path | None = None,
        device: str = "auto",
        progress: bool = True,
        save_every: int = 1,
        tensorboard: str | Path | None = None,
        world: World = ALONE,
        report: Report | None = None,
    ) -> Recommender:
        """Continue the run folder ``path`` up to ``epochs`` (default: its config's),
        exactly where its last checkpoint left it (``python -m deeprec.train --resume``)."""
        folder = lifecycle.run_folder(_path(path, "path"))
        save_every = _positive(save_every, "save_every")
        if epochs is not None:
            epochs = _positive(epochs, "epochs")
        _board(tensorboard)
        self = cls.__new__(cls)
        self._blank(None, device, progress)
        run = lifecycle.resume(folder, _dir(data_dir), self.device, epochs, world=world)
        self._core, self.config, self.folder = run.trainer, run.config, run.folder.path
        say = report if report is not None else (tqdm.write if self.progress else _quiet)
        self._train(run, say, save_every, False, tensorboard)
        return self

    def _train(
        self,
        run: lifecycle.Run,
        say: Report,
        save_every: int,
        slim: bool,
        tensorboard: str | Path | None,
    ) -> None:
        trainer = run.trainer
        main = trainer.world.main
        say = say if main else _quiet
        if main and (removed := checkpoint.remove_partial_writes(run.folder.path)):
            names = ", ".join(f"{name} ({size / 2**20:.0f} MiB)" for name, size in removed)
            say(f"removed what a stopped run left half-written in {run.folder.path}: {names}")
        _start_lines(say, run.dataset, trainer, self.device)
        log = None
        if tensorboard is not None and main:
            log = tensorboard_log.EpochLog(Path(tensorboard) / run.folder.path.name, run.config)
        try:
            self.validation_metrics = lifecycle.train(
                run,
                save_every,
                not self.progress,
                report=say,
                sinks=[log] if log else [],
                slim=slim,
            )
        finally:
            trainer.model.eval()
            if log is not None:
                log.close()

    # ------------------------------------------------------------ saving
    def save(self, path: str | Path, *, overwrite: bool = False, slim: bool = False) -> Path:
        """Write the run folder the commands read (config.toml, model.pt, metrics.json,
        loss.png; data/ for ratings handed over in memory); returns its path. A folder
        holding a run is refused unless ``overwrite``. slim: weights only (not resumable)."""
        core = self._fitted("save")
        out = _path(path, "path")
        overwrite, slim = _switch(overwrite, "overwrite"), _switch(slim, "slim")
        if not isinstance(core, Trainer):
            raise CheckpointError(
                f"{self.folder}: a loaded model is saved already; copy its folder to {out}, or "
                "fit it again to save a new run"
            )
        run = lifecycle.save(core, self._dataset, out, overwrite, slim, self.validation_metrics)
        self.config, self.folder = core.config, run.folder.path
        return run.folder.path

    @classmethod
    def load(
        cls, path: str | Path, *, data_dir: str | Path | None = None, device: str = "auto"
    ) -> Recommender:
        """A run folder (or its model.pt) written by ``save`` or ``python -m deeprec.train``,
        its data re-read and checked against the model's fingerprint."""
        given = _path(path, "path")
        if not given.exists():
            raise CheckpointError(f"{given}: no such run folder or model.pt")
        if given.is_dir() and not RunFolder(given).holds_run():
            raise CheckpointError(f"{given}: not a run folder (it holds no model.pt)")
        self = cls.__new__(cls)
        self._blank(None, device, True)
        self._core = load_trained(given, _dir(data_dir), self.device)
        self.config, self.folder = self._core.config, RunFolder.of(given).path
        return self

    # ------------------------------------------------------------ what it learned
    @property
    def history(self) -> pd.DataFrame:
        """One row per finished epoch: train_loss, validation metrics, seconds, lr."""
        core = self._fitted("history")
        return pd.DataFrame(core.history).set_index("epoch") if core.history else pd.DataFrame()

    @property
    def epochs_trained(self) -> int:
        return len(self._fitted("epochs_trained").history)

    @property
    def users(self) -> np.ndarray:
        """The training data's user ids, sorted."""
        return self._fitted("users").matrix.user_ids()

    @property
    def items(self) -> np.ndarray:
        """The model's item ids, sorted (the catalogue it ranks)."""
        return self._fitted("items").matrix.item_ids()

    @property
    def data_path(self) -> Path:
        """Where its ratings were read from (``<in memory>`` for ratings handed over)."""
        core = self._fitted("data_path")
        if isinstance(core, Trained):
            return core.data_path
        return self._dataset.path if self._dataset is not None else Path(core.config.data)

    @property
    def validation_size(self) -> int:
        """How many validation ratings the split holds (those its users and items share
        with training)."""
        return len(self._fitted("validation_size").matrix.val_ratings)

    @property
    def model(self) -> torch.nn.Module:
        """The torch model (deeprec.model.AutoEncoder)."""
        return self._fitted("model").model

    # ------------------------------------------------------------ using it
    def predict(self, users: Iterable[int] | int, items: Iterable[int] | int) -> np.ndarray:
        """Predicted ratings of (users[k], items[k]), clipped to the rating scale, as
        ``evaluate`` scores them; a known user's prediction comes from their training
        ratings."""
        core = self._scoring("predict")
        if core.plan.objective == "multinomial":
            raise ConfigError(
                "predict gives ratings, and a ranking model (objective multinomial) scores "
                "items without a rating scale; use recommend"
            )
        u = _positions(users, core.matrix.user_ids(), "users")
        i = _positions(items, core.matrix.item_ids(), "items")
        if len(u) != len(i):
            raise DataError(f"predict: {len(u)} users but {len(i)} items (one each per rating)")
        rows, cols = (u, i) if core.matrix.rows_are_users else (i, u)
        got = predict_entries(core.model, core.inputs, rows, cols, core.plan, core.device,
                              offsets=core.offsets)  # fmt: skip
        return np.clip(got, *core.matrix.scale)

    def recommend(
        self,
        users: Iterable[int] | int | None = None,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        batch_size: int = 512,
    ) -> pd.DataFrame:
        """The top ``k`` items of each user (None: every training user) as a DataFrame:
        user, rank, item, score (the predicted rating clipped to the scale; a ranking
        model's log-probability), unclipped (the score that orders the list), title.
        exclude_seen: leave out each user's training items. Scored ``batch_size`` users at
        a time (memory: one batch x the catalogue)."""
        core = self._scoring("recommend")
        k = _positive(k, "k")
        batch_size = _positive(batch_size, "batch_size")
        seen = _switch(exclude_seen, "exclude_seen")
        scorer = recommendation.TrainedScorer(core)
        if users is None:
            positions = np.arange(len(scorer.user_ids))
        else:
            positions = _positions(users, scorer.user_ids, "users")
        frames = [
            ranking.top_frame(scorer, positions[s : s + batch_size], k, seen, True)
            for s in range(0, len(positions), batch_size)
        ]
        return pd.concat(frames, ignore_index=True) if frames else _empty_list(True)

    def recommend_new(
        self, ratings: Mapping[int, float] | pd.Series | pd.DataFrame, k: int = 10
    ) -> pd.DataFrame:
        """The top ``k`` items for a user the model never saw, folded in from their
        ``ratings`` ({item id: rating}, a Series indexed by item, or a DataFrame with item
        and rating columns), no retraining; the rated items are left out. User-based
        models only. Columns: rank, item, score, unclipped, title."""
        core = self._scoring("recommend_new")
        k = _positive(k, "k")
        if not core.matrix.rows_are_users:
            raise ConfigError(
                "recommend_new needs a user-based model (by='user'): an item-based one has no "
                "input row for a user it never saw"
            )
        given = _given_ratings(ratings, core.matrix.item_ids(), core.matrix.scale)
        try:
            scores, rated = recommendation.new_user(core, given)
        except ConfigError as exc:
            raise ConfigError(f"recommend_new: {str(exc).removeprefix('--ratings: ')}") from None
        scorer = recommendation.TrainedScorer(core)
        return ranking.list_frame(scorer, top_k(scores, rated, k), scores, unclipped=True)

    def evaluate(self, *, ranking: bool = True, ease_lambda: float | None = 250.0) -> pd.DataFrame:
        """The metrics ``python -m deeprec.evaluate`` prints, one row per model (deeprec,
        global mean, user+item bias, popularity, EASE): RMSE with its bootstrap 95% interval,
        MAE, and with ``ranking`` Precision/Recall/NDCG@10 (interval), Recall@20, NDCG@100,
        coverage and popularity rank, on the validation split. ease_lambda: EASE's L2 weight
        (None: no EASE row)."""
        core = self._scoring("evaluate")
        if ease_lambda is not None:
            ease_lambda = _number(ease_lambda, "ease_lambda")
            if not 0 < ease_lambda < math.inf:
                raise ConfigError(f"ease_lambda must be > 0 (None: no EASE), got {ease_lambda}")
        table = evaluate(core, core.device, ranking=_switch(ranking, "ranking"),
                         ease_lambda=ease_lambda)  # fmt: skip
        return pd.DataFrame.from_dict(table, orient="index")

    def export(self, path: str | Path) -> dict[str, float]:
        """An ONNX scorer and its sidecar (``python -m deeprec.export``), checked against the
        torch model with onnxruntime; returns the check's figures."""
        core = self._scoring("export")
        out = _path(path, "path")
        if out.suffix.lower() != ".onnx":
            raise ConfigError(f"export: {out}: name the file *.onnx")
        return export_onnx(core, out)

    # ------------------------------------------------------------ internals
    def _scoring(self, what: str) -> ModelOnData:
        """The model as it scores: a loaded run as loaded; a trained one on the plan a loaded
        run of it would get (deeprec.training.plan.inference_plan), so predictions, lists
        and metrics are the same before and after save/load, bit for bit."""
        core = self._fitted(what)
        if isinstance(core, Trained):
            return core
        chosen = inference_plan(core.config, core.device)
        return ModelOnData(core.config, chosen, core.device, core.matrix, core.inputs,
                           core.offsets, core.model, core.titles)  # fmt: skip

    def _fitted(self, what: str) -> Trainer | Trained:
        if self._core is None:
            raise ConfigError(f"{what}: this Recommender is not fitted; call fit() or load()")
        return self._core

    def _data(
        self,
        ratings: Ratings | None,
        validation: pd.DataFrame | None,
        titles: Mapping[int, str] | pd.DataFrame | None,
    ) -> tuple[Config, Dataset | None]:
        """(the config for these ratings, their Dataset when handed over in memory; None
        when the config names them: a dataset name or path, read as the commands read it)."""
        config = self.config
        if ratings is None or isinstance(ratings, str | Path):
            if validation is not None or titles is not None:
                raise ConfigError("fit: validation= and titles= go with ratings in memory "
                                  "(a DataFrame or a sparse matrix)")  # fmt: skip
            return (config if ratings is None else config.replace(data=str(ratings))), None
        if sp.issparse(ratings):
            frame = from_sparse(ratings, label="ratings")
        elif isinstance(ratings, pd.DataFrame):
            frame = ratings
        else:
            raise DataError(
                f"ratings: expected a pandas DataFrame, a scipy sparse matrix or a dataset name, "
                f"got {type(ratings).__name__}"
            )
        scale = config.scale_range()
        names = _titles(titles)
        checked = from_frame(frame, titles=names, scale=scale, label="ratings")
        if validation is not None:
            held = from_frame(validation, scale=scale, label="validation")
            shared = [c for c in checked.columns if c in held.columns and c != "validation"]
            checked = with_validation(checked[shared], held[shared])
            config = config.replace(split="given")
        elif "validation" in checked.columns and config.split != "given":
            checked = checked.drop(columns="validation")
        if scale is None:
            scale = (float(checked["rating"].min()), float(checked["rating"].max()))
        dataset = Dataset(IN_MEMORY_NAME, IN_MEMORY, checked, names, scale, config.scale == [])
        return config.replace(data=IN_MEMORY_NAME, scale=list(scale)), dataset


# ---------------------------------------------------------------- argument checks
def _with_options(base: Config, options: dict[str, Any]) -> Config:
    """``base`` with Config fields ``options`` (an unknown name refused with the nearest)."""
    known = Config.names()
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown option {name!r}{hint} (see deeprec.Config)")
    return base.replace(**options) if options else base


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what}: expected a string, got {type(value).__name__}")
    return value


def _path(value: Any, what: str) -> Path:
    if not isinstance(value, str | Path):
        raise ConfigError(f"{what}: expected a path, got {type(value).__name__}")
    return Path(value)


def _dir(value: Any) -> str | None:
    """data_dir as the data layer takes it (None: $DEEPREC_DATA, then the user cache)."""
    return None if value is None else str(_path(value, "data_dir"))


def _opt_path(value: Any, what: str) -> Path | None:
    return None if value is None else _path(value, what)


def _board(folder: Any) -> None:
    """--tensorboard's folder, checked with its extra before any data is read."""
    if folder is not None:
        _path(folder, "tensorboard")
        tensorboard_log.require()


def _switch(value: Any, what: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ConfigError(f"{what} must be True or False, got {value!r}")
    return bool(value)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    return float(value)


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{what} must be >= 1, got {value}")
    return int(value)


def _positions(ids: Any, known: np.ndarray, what: str) -> np.ndarray:
    """Positions of the ids ``ids`` among ``known`` (sorted); a DataError names what is
    not an id, or the first ids the training data does not hold."""
    if ids is None:
        raise DataError(f"{what}: expected ids, got None")
    if isinstance(ids, str | bytes):
        raise DataError(f"{what}: expected integer ids, got the string {ids!r}")
    values = np.atleast_1d(np.asarray(list(ids) if isinstance(ids, Iterable) else ids))
    if values.ndim != 1:
        raise DataError(f"{what}: expected a 1-D sequence of ids, got shape {values.shape}")
    if values.dtype == bool or not (np.issubdtype(values.dtype, np.number) or len(values) == 0):
        raise DataError(f"{what}: expected integer ids, got {values.dtype}")
    as_float = values.astype(np.float64)
    if np.isnan(as_float).any():
        raise DataError(f"{what}[{int(np.flatnonzero(np.isnan(as_float))[0])}] is NaN, not an id")
    if (as_float != np.floor(as_float)).any():
        raise DataError(f"{what}: {as_float[as_float != np.floor(as_float)][0]} is not an id")
    values = values.astype(np.int64)
    pos = np.searchsorted(known, values)
    unknown = (pos >= len(known)) | (known[np.minimum(pos, len(known) - 1)] != values)
    if unknown.any():
        some = ", ".join(str(v) for v in values[unknown][:5])
        raise DataError(
            f"{what}: {int(unknown.sum())} id(s) not in the training data ({some}); "
            f"it holds {len(known)}"
        )
    return pos


def _given_ratings(
    ratings: Any, item_ids: np.ndarray, scale: tuple[float, float]
) -> dict[int, float]:
    """A new user's ratings as {item id: rating}, each item known and rating on the scale."""
    if isinstance(ratings, pd.DataFrame):
        cols = {str(c).lower(): c for c in ratings.columns}
        item = next((cols[c] for c in ("item", "movieid", "item_id") if c in cols), None)
        if item is None or "rating" not in cols:
            raise DataError(f"ratings: need item and rating columns, got {list(ratings.columns)}")
        pairs = zip(ratings[item].tolist(), ratings[cols["rating"]].tolist(), strict=True)
    elif isinstance(ratings, pd.Series | Mapping):
        pairs = ratings.items()
    else:
        raise DataError(
            f"ratings: expected {{item id: rating}}, a Series or a DataFrame, got "
            f"{type(ratings).__name__}"
        )
    given: dict[int, float] = {}
    for item, value in pairs:
        if isinstance(item, bool) or not isinstance(item, int | np.integer | float | np.floating):
            raise DataError(f"ratings: item {item!r} is not an item id")
        if item != item or float(item) != int(item):
            raise DataError(f"ratings: item {item!r} is not an item id")
        try:
            rating = float(value)
        except (TypeError, ValueError):
            raise DataError(
                f"ratings: item {int(item)}: rating {value!r} is not a number"
            ) from None
        if not np.isfinite(rating) or not scale[0] <= rating <= scale[1]:
            raise DataError(f"ratings: item {int(item)}: rating {value!r} is not in "
                            f"[{scale[0]:g}, {scale[1]:g}]")  # fmt: skip
        given[int(item)] = rating
    if not given:
        raise DataError("ratings: empty; give at least one {item id: rating}")
    _positions(list(given), item_ids, "ratings' items")
    return given


def _titles(titles: Mapping[int, str] | pd.DataFrame | None) -> dict[int, str]:
    """{item id: title} from a mapping or a DataFrame of an item column and a title column."""
    if titles is None:
        return {}
    if isinstance(titles, pd.DataFrame):
        cols = {str(c).lower(): c for c in titles.columns}
        item = next((cols[c] for c in ("movieid", "item", "item_id") if c in cols), None)
        if item is None or "title" not in cols:
            raise DataError(f"titles: need movieId (or item) and title columns, got "
                            f"{list(titles.columns)}")  # fmt: skip
        ids = pd.to_numeric(titles[item], errors="coerce")
        if ids.isna().any():
            raise DataError(f"titles row {titles.index[ids.isna().to_numpy()][0]!r}: "
                            f"{item} is not an id")  # fmt: skip
        return dict(zip(ids.astype("int64").tolist(), titles[cols["title"]].fillna("").astype(str),
                        strict=True))  # fmt: skip
    if isinstance(titles, Mapping):
        return {int(k): str(v) for k, v in titles.items()}
    raise DataError(f"titles: expected {{item id: title}} or a DataFrame, got "
                    f"{type(titles).__name__}")  # fmt: skip


def _empty_list(unclipped: bool) -> pd.DataFrame:
    columns = ["user", "rank", "item", "score", *(["unclipped"] if unclipped else []), "title"]
    return pd.DataFrame({c: [] for c in columns})


def _start_lines(say: Report, dataset: Dataset, trainer: Trainer, device: torch.device) -> None:
    """What a run says before its first epoch: the data, the split, the device, the loss
    path, an inferred scale, and the memory it needs."""
    c, m, world = trainer.config, trainer.matrix, trainer.world
    procs = f" | {world.size} processes" if world.active else ""
    where = "ratings in memory" if dataset.path == IN_MEMORY else dataset.path
    say(
        f"deeprec {__version__} | {where} | split {c.split} | by {c.by} | "
        f"{m.n_users} users x {m.n_items} items | {m.train.nnz} train / "
        f"{len(m.val_ratings)} val ratings | {device} | loss: {trainer.plan.impl}{procs}"
    )
    if dataset.scale_inferred:
        lo, hi = dataset.scale
        if dataset.path == IN_MEMORY:
            why = "the ratings' range (they state none; scale=[LO, HI] sets it)"
        else:
            why = "the range of the file's ratings (it states none; --scale LO,HI sets it)"
        say(f"rating scale {lo:g} to {hi:g}: {why}")
    need = memory.estimate(m, trainer.model)
    say(
        f"memory estimate: data {need['data_mib']:.0f} MiB, model + gradients + Adam "
        f"{need['model_and_optimizer_mib']:.0f} MiB (per process; activations not counted)"
    )
