"""Load ``results/<protocol>/results.csv`` files into one tidy DataFrame.

A results directory is what ``bench run`` writes: ``results.csv`` holds one row per (dataset,
split, method, seed, model, metric) with the provenance of each number beside it. Loading several
directories concatenates them, but only when their evaluation settings agree: a MAP@R computed
with another ``k`` policy, another query/reference rule or another number of folds is a different
number, and silently pooling it would make the comparison unfair.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.evaluate.metric_table import headline_model as metric_headline

ID_COLUMNS = ["protocol", "dataset", "split", "method", "seed", "model", "metric", "value"]
#: Provenance columns that define how a number was measured; rows may only be pooled when these
#: agree (``allow_mixed=True`` overrides). ``setting`` is not here: tables group by it.
EVALUATION_SETTINGS = ["k", "query_reference", "folds", "backbone", "weights"]
#: Identify one number; a key seen twice means the same run was loaded twice.
KEY_COLUMNS = ["protocol", "dataset", "split", "method", "seed", "model", "metric"]


def find_results(path: str | Path) -> list[Path]:
    """The ``results.csv`` files under ``path``: the file itself, ``path/results.csv``, or each
    ``path/*/results.csv`` of a results root."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / "results.csv").is_file():
        return [path / "results.csv"]
    found = sorted(path.glob("*/results.csv"))
    if not found:
        raise BenchError("does not exist" if not path.exists()
                         else "holds no results.csv (run `bench run` first)", source=str(path))
    return found


def read_results(csv: str | Path) -> pd.DataFrame:
    """One results.csv, type-checked: required columns present, seeds integer, values numeric."""
    csv = Path(csv)
    try:
        frame = pd.read_csv(csv, dtype={"split": str, "model": str, "method": str,
                                        "dataset": str, "protocol": str, "k": str,
                                        "query_reference": str})
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise BenchError(f"cannot read: {error}", source=str(csv)) from None
    except pd.errors.EmptyDataError:
        raise BenchError("empty file", source=str(csv)) from None
    missing = [c for c in ID_COLUMNS if c not in frame.columns]
    if missing:
        raise BenchError(f"missing column(s) {', '.join(missing)}", source=str(csv),
                         field=missing[0])
    for column, kind in (("value", "numeric"), ("seed", "integer")):
        converted = pd.to_numeric(frame[column], errors="coerce")
        bad = converted.isna() if column == "seed" else converted.isna() & frame[column].notna()
        if bad.any():
            first = int(bad.to_numpy().argmax())
            raise BenchError(f"line {first + 2}: not {kind} ({frame[column].iloc[first]!r})",
                             source=str(csv), field=column)
        frame[column] = converted.astype(int if column == "seed" else float)
    infinite = np.isinf(frame["value"].to_numpy())
    if infinite.any():  # no metric is infinite: inf would rank first and poison every mean
        first = int(infinite.argmax())
        raise BenchError(f"line {first + 2}: value {frame['value'].iloc[first]} is not finite "
                         "(a damaged table? re-create it with `bench rebuild`)",
                         source=str(csv), field="value")
    if len(frame) and frame["value"].isna().all():
        raise BenchError("every value is NaN: nothing to compare (did every run fail?)",
                         source=str(csv), field="value")
    if "fid" in frame.columns:
        frame["fid"] = pd.to_numeric(frame["fid"], errors="coerce")
    if "is_default_split" in frame.columns:
        frame["is_default_split"] = frame["is_default_split"].map(_as_bool)
    frame["source"] = str(csv.parent)
    return frame


def load_results(paths: str | Path | Iterable[str | Path], *,
                 allow_mixed: bool = False) -> pd.DataFrame:
    """Every row of every results directory in ``paths``, as one tidy DataFrame.

    Adds a ``source`` column (the directory a row came from). Raises :class:`BenchError` when the
    rows' evaluation settings (:data:`EVALUATION_SETTINGS`) differ, unless ``allow_mixed``, or
    when the same number appears twice.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for path in paths:
        for csv in find_results(path):
            if csv.resolve() not in {f.resolve() for f in files}:
                files.append(csv)
    if not files:
        raise BenchError("no results directory given")
    frame = pd.concat([read_results(f) for f in files], ignore_index=True, sort=False)
    if not allow_mixed:
        check_settings(frame)
    duplicated = frame.duplicated(KEY_COLUMNS, keep=False)
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        sources = sorted(frame.loc[duplicated & _same_key(frame, row), "source"].unique())
        raise BenchError(f"the same result appears twice (protocol {row['protocol']}, method "
                         f"{row['method']}, seed {row['seed']}, model {row['model']}, metric "
                         f"{row['metric']}) in {', '.join(sources)}", source=sources[0])
    return frame


def check_settings(frame: pd.DataFrame) -> None:
    """Refuse rows whose evaluation settings differ: names the column and the differing values
    with the directories they come from."""
    for column in EVALUATION_SETTINGS:
        if column not in frame.columns:
            continue
        values = frame[column].astype(str).where(frame[column].notna(), "<missing>")
        if values.nunique() > 1:
            where = "; ".join(
                f"{value} in {', '.join(sorted(frame.loc[values == value, 'source'].unique()))}"
                for value in sorted(values.unique()))
            raise BenchError(f"results measured with different evaluation settings cannot be "
                             f"compared ({where}); pass allow_mixed=True (--allow-mixed) to pool "
                             f"them anyway", source=str(frame["source"].iloc[0]), field=column)


def _same_key(frame: pd.DataFrame, row: pd.Series) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for column in KEY_COLUMNS:
        mask &= frame[column] == row[column]
    return mask


def _as_bool(value: object) -> object:
    if isinstance(value, bool) or pd.isna(value):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    return value


def headline_model(frame: pd.DataFrame) -> str:
    """``concatenated`` when present (more than one fold), else ``separate``, else the first
    (the rule of bench.evaluate.metric_table)."""
    model = metric_headline(map(str, frame["model"].unique()))
    if model is None:
        raise BenchError("no results rows")
    return model


def default_split(frame: pd.DataFrame) -> str:
    """The split a plain comparison uses: the one flagged ``is_default_split``, else
    ``standard``, else the only split."""
    splits = list(dict.fromkeys(frame["split"]))
    if "is_default_split" in frame.columns:
        flagged = frame.loc[frame["is_default_split"] == True, "split"].unique()  # noqa: E712
        if len(flagged) == 1:
            return str(flagged[0])
    if "standard" in splits or len(splits) == 1:
        return "standard" if "standard" in splits else str(splits[0])
    raise BenchError(f"several splits ({', '.join(map(str, splits))}) and none flagged "
                     f"is_default_split", field="split")
