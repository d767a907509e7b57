"""Jobs: the fine-tuning pipeline run detached, queued per compute, streamed, resumable."""
