"""The seed's helper script, on chattune: the same arguments as Azure's `download-dataset.py`.

    python ./download-dataset.py --dataset chitchat --download_dir chitchat_dataset \
        --dataset_split_pc 5

writes the first 5% of every split as `<download_dir>/<split>.jsonl` in the ultrachat_200k
schema (`chattune data download` does the same from the command line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chattune.data.download import check_split_pc, download_dataset
from chattune.errors import ChattuneError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="HuggingFaceH4/ultrachat_200k")
    parser.add_argument("--download_dir", default="data")
    parser.add_argument("--dataset_split_pc", default="100")
    args = parser.parse_args()
    try:
        result = download_dataset(
            args.dataset, Path(args.download_dir), check_split_pc(args.dataset_split_pc)
        )
    except ChattuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split in result.splits:
        print(f"{split.name}: {split.rows} rows -> {split.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
