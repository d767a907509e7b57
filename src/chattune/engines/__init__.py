"""Serving engines beside chattune's own: where they are installed, whether they work.

vLLM pins exact torch versions, so it never goes into chattune's environment: it lives in its
own virtual environment (`<workspace>/engines/vllm/`, made by `chattune engine install vllm`,
or any environment named by `$CHATTUNE_VLLM`), and chattune runs its OpenAI server there and
talks to it over HTTP on loopback (`serving/control/vllm.py`).
"""
