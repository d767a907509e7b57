"""Chat datasets: the conversation schema, format converters, download and statistics.

Example:
    >>> from chattune.data import download_dataset, validate_file, iter_conversations
    >>> res = download_dataset("chitchat", "data", split_pc=5)
    >>> validate_file("data/train_sft.jsonl").ok
    True
"""

from chattune.data.download import DownloadResult, SplitResult, download_dataset
from chattune.data.formats import detect_format, prompt_id, to_messages, to_ultrachat
from chattune.data.schema import Problem, check_messages
from chattune.data.stats import DatasetStats, TokenStats, dataset_stats
from chattune.data.validate import (
    CheckedRow,
    ValidationReport,
    iter_checked,
    iter_conversations,
    validate_file,
)

__all__ = [
    "CheckedRow",
    "DatasetStats",
    "DownloadResult",
    "Problem",
    "SplitResult",
    "TokenStats",
    "ValidationReport",
    "check_messages",
    "dataset_stats",
    "detect_format",
    "download_dataset",
    "iter_checked",
    "iter_conversations",
    "prompt_id",
    "to_messages",
    "to_ultrachat",
    "validate_file",
]
