"""Hugging Face Hub datasets: a fast reachability check, then `datasets.load_dataset`.

This is the seed's `download-dataset.py`: for every split of the dataset, the first P%
(`split[:P%]`, no shuffle). Without network, `datasets` can spend minutes in retries; the
probe here fails in seconds instead and names the offline alternative.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from chattune.errors import DatasetError
from chattune.hub import PROBE_TIMEOUT_S, hub_endpoint, offline_env, probe_hub

_OFFLINE_FIX = (
    "use the offline corpus: `chattune data download --dataset chitchat ...`, or give a "
    "local .jsonl/.json/.csv/.parquet file or folder as --dataset"
)


def check_hub(dataset: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast when the hub cannot be reached.

    Args:
        dataset: the hub dataset id (for the message).
        timeout: seconds for the probe.

    Raises:
        DatasetError: offline mode is set, or the hub did not answer; the fix names
            `--dataset chitchat`.
    """
    var = offline_env()
    if var:
        raise DatasetError(
            f"Dataset {dataset!r} is on the Hugging Face Hub, which cannot be reached: "
            f"offline mode is on ({var}={os.environ[var]}).",
            fix=f"unset {var} where the hub is reachable; or {_OFFLINE_FIX}",
        )
    endpoint = hub_endpoint()
    why = probe_hub(endpoint, timeout)
    if why:
        raise DatasetError(
            f"Dataset {dataset!r} is on the Hugging Face Hub, which cannot be reached at "
            f"{endpoint} ({why}).",
            fix=f"check the network or HF_ENDPOINT; or {_OFFLINE_FIX}",
        )


def hub_splits(dataset: str, split_pc: float) -> Iterator[tuple[str, int, int, Iterator[Any]]]:
    """Load the first `split_pc` percent of every split of a hub dataset.

    Args:
        dataset: a hub id such as `HuggingFaceH4/ultrachat_200k`.
        split_pc: percent in (0, 100].

    Returns:
        An iterator of `(split name, rows taken, rows in the whole split, iterator of row
        dicts)`, one per split.

    Raises:
        DatasetError: the hub cannot be reached, or `datasets` fails to load the dataset.
    """
    check_hub(dataset)
    import datasets

    try:
        names = datasets.get_dataset_split_names(dataset)
    except Exception as exc:  # DatasetNotFoundError, ConnectionError, gated repos, ...
        raise DatasetError(
            f"The split names of hub dataset {dataset!r} cannot be read: {exc}",
            fix="check the dataset id (owner/name) and, for gated datasets, `hf auth login`",
        ) from exc
    for split in names:
        try:
            if float(split_pc).is_integer():
                # exactly the seed's slice, with datasets' own rounding
                ds = datasets.load_dataset(dataset, split=f"{split}[:{int(split_pc)}%]")
            else:  # `split[:x%]` takes whole percents only: slice by count instead
                ds = datasets.load_dataset(dataset, split=split)
                ds = ds.select(range(round(split_pc * len(ds) / 100.0)))
        except Exception as exc:
            raise DatasetError(
                f"Split {split!r} of hub dataset {dataset!r} cannot be loaded: {exc}",
                fix="check the network and the dataset id; or " + _OFFLINE_FIX,
            ) from exc
        info = ds.info.splits.get(split) if ds.info and ds.info.splits else None
        total = info.num_examples if info and info.num_examples else len(ds)
        yield split, len(ds), total, iter(ds)
