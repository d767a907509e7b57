"""The engine: continuous batching equals one-at-a-time `generate`, cancel, LoRA mixed batches,
sampling."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from chattune.errors import ChattuneError, InvalidParameter
from chattune.models.checkpoint import resolve_checkpoint
from chattune.models.loading import cache_keyword, load_model, load_tokenizer
from chattune.serving.model_server.chat import ChatPrompter, Detokenizer
from chattune.serving.model_server.engine import Engine, SamplingParams, sample_next

QUESTIONS = [
    "Hello",
    "What is the capital of France? Tell me about Paris and the weather in the park.",
    "Can you tell me a joke about computers?",
    "Numbers: 0 1 2 3",
    "Why did the programmer quit his job? Because he did not get arrays. Fine-tuning a chat "
    "model needs data, a base model and patience.",
    "I am fine",
]


def _load(model_dir: Path, adapters: dict | None = None, **kw) -> Engine:
    ckpt = resolve_checkpoint(model_dir)
    model, names = load_model(ckpt, adapters, device=torch.device("cpu"), dtype=torch.float32)
    return Engine(model, load_tokenizer(ckpt), adapters=names, **kw)


def _reference(model, prompt: list[int], max_new: int, eos: frozenset[int]) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=sorted(eos),
        pad_token_id=sorted(eos)[0],
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("which", ["chatty_llama_dir", "chatty_phi3_dir"])
def test_continuous_batching_equals_generate_one_at_a_time(which, request):
    model_dir = request.getfixturevalue(which)
    engine = _load(model_dir, max_batch_size=4)
    try:
        prompter = ChatPrompter(engine.tokenizer)
        prompts = [prompter.encode([{"role": "user", "content": q}]) for q in QUESTIONS]
        budgets = [24, 9, 30, 5, 17, 12]
        first = [engine.submit(p, SamplingParams(max_new_tokens=n)) for p, n in
                 zip(prompts[:3], budgets[:3], strict=True)]  # fmt: skip
        it = iter(first[2])
        next(it)  # request 3 has decoded a token: the rest join a running batch
        later = [engine.submit(p, SamplingParams(max_new_tokens=n)) for p, n in
                 zip(prompts[3:], budgets[3:], strict=True)]  # fmt: skip
        list(it)
        handles = first + later
        texts = [h.text() for h in handles if h is not first[2]]
        stats = engine.stats()
        for p, n, h in zip(prompts, budgets, handles, strict=True):
            ref = _reference(engine.model, p, n, engine.eos_ids)
            assert h.token_ids == ref, f"prompt of {len(p)} tokens, {n} new"
            assert h.completion_tokens == len(ref) and h.prompt_tokens == len(p)
            assert h.finish_reason == ("stop" if ref[-1] in engine.eos_ids else "length")
        assert len({tuple(h.token_ids) for h in handles}) == len(handles)  # varied outputs
        assert any(texts)
        assert stats["max_batch"] > 1
        assert stats["joined_running"] >= 1
        assert stats["steps"] < sum(len(h.token_ids) for h in handles)  # rows shared steps
        assert stats["max_batch"] <= 4
    finally:
        engine.stop()


def test_cancel_stops_a_row_and_the_others_go_on(chatty_llama_dir):
    engine = _load(chatty_llama_dir, eos_ids=[])  # never stops early
    try:
        prompter = ChatPrompter(engine.tokenizer)
        prompt = prompter.encode([{"role": "user", "content": "Hello"}])
        params = SamplingParams(max_new_tokens=200, stop=())
        victim = engine.submit(prompt, params)
        other = engine.submit(prompt, SamplingParams(max_new_tokens=40))
        it = iter(victim)
        next(it)
        victim.cancel()
        rest = list(it)
        assert victim.finish_reason == "cancelled"
        assert victim.completion_tokens < 200
        assert len(rest) < 100
        other.text()
        assert other.finish_reason in ("length", "stop")
        assert engine.stats()["cancelled"] == 1
        # a handle cancelled before it is admitted never runs
        engine_busy = engine.submit(prompt, SamplingParams(max_new_tokens=30))
        queued = engine.submit(prompt, SamplingParams(max_new_tokens=30))
        queued.cancel()
        assert queued.text() == "" or queued.finish_reason == "cancelled"
        engine_busy.text()
    finally:
        engine.stop()


def test_mixed_adapter_batch_equals_each_adapter_alone(chatty_llama_dir, llama_adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    engine = _load(chatty_llama_dir, llama_adapters)
    try:
        assert set(engine.adapters) == {"a1", "a2"}
        prompter = ChatPrompter(engine.tokenizer)
        prompt = prompter.encode([{"role": "user", "content": QUESTIONS[2]}])
        names = ["a1", "__base__", "a2", "a1", "a2"]
        handles = [engine.submit(prompt, SamplingParams(max_new_tokens=12), n) for n in names]
        for h in handles:
            h.text()
        assert engine.stats()["max_batch"] > 1
        refs = {}
        for name in ("a1", "a2", "__base__"):
            base = AutoModelForCausalLM.from_pretrained(chatty_llama_dir).eval()
            model = (
                base
                if name == "__base__"
                else PeftModel.from_pretrained(base, llama_adapters[name]).eval()
            )
            refs[name] = _reference(model, prompt, 12, engine.eos_ids)
        assert len({tuple(v) for v in refs.values()}) == 3  # the adapters change the output
        for name, h in zip(names, handles, strict=True):
            assert h.token_ids == refs[name], name
        with pytest.raises(InvalidParameter, match="a1, a2"):
            engine.submit(prompt, SamplingParams(), "nope")
    finally:
        engine.stop()


def test_sampling_is_reproducible_with_a_seed(chatty_llama_dir):
    engine = _load(chatty_llama_dir)
    try:
        prompt = ChatPrompter(engine.tokenizer).encode([{"role": "user", "content": "Hello"}])

        def run(seed: int | None) -> list[int]:
            p = SamplingParams(max_new_tokens=20, do_sample=True, temperature=1.5, seed=seed)
            return _tokens(engine, prompt, p)

        a, b, c = run(7), run(7), run(8)
        assert a == b
        assert a != c
        tiny_p = SamplingParams(max_new_tokens=10, do_sample=True, top_p=1e-6, seed=3)
        greedy = SamplingParams(max_new_tokens=10)
        assert _tokens(engine, prompt, tiny_p) == _tokens(engine, prompt, greedy)
    finally:
        engine.stop()


def _tokens(engine: Engine, prompt: list[int], params: SamplingParams) -> list[int]:
    h = engine.submit(prompt, params)
    h.text()
    return h.token_ids


def test_sample_next_respects_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    gen = torch.Generator().manual_seed(0)
    params = SamplingParams(do_sample=True, temperature=1.0, top_p=0.7)
    seen = {sample_next(logits, params, gen) for _ in range(400)}
    assert seen == {0, 1}  # 0.5 < 0.7 so token 1 is in; 0.8 >= 0.7 so token 2 is out
    wide = {sample_next(logits, SamplingParams(do_sample=True), gen) for _ in range(400)}
    assert wide == {0, 1, 2, 3}
    assert sample_next(logits, SamplingParams(do_sample=True, temperature=0), gen) == 0


def test_a_tiny_temperature_is_greedy_not_nan():
    # logits / 1e-300 overflowed to inf, and inf - inf made the softmax NaN (a 500)
    logits = torch.tensor([2.0, 5.0, -1.0, 4.999])
    gen = torch.Generator().manual_seed(0)
    for t in (1e-300, 5e-324, 1e-30):
        params = SamplingParams(do_sample=True, temperature=t)
        assert {sample_next(logits, params, gen) for _ in range(50)} == {1}


def test_logprobs_are_recorded_per_answer_token(chatty_llama_dir):
    engine = _load(chatty_llama_dir, max_batch_size=4)
    try:
        prompt = ChatPrompter(engine.tokenizer).encode([{"role": "user", "content": "Hello"}])
        # batched with rows that ask for none, and one sampled row
        asks = [SamplingParams(max_new_tokens=12, logprobs=4), SamplingParams(max_new_tokens=12),
                SamplingParams(max_new_tokens=12, logprobs=0, do_sample=True, seed=1)]  # fmt: skip
        handles = [engine.submit(prompt, p) for p in asks]
        for h in handles:
            h.text()
        greedy, plain, sampled = handles
        assert plain.logprobs == []
        eos = engine.eos_ids
        for h, top in ((greedy, 4), (sampled, 0)):
            answer = [t for t in h.token_ids if t not in eos]  # eos is not an answer token
            assert [r.token for r in h.logprobs] == answer
            assert all(len(r.top) == top and r.logprob <= 0 for r in h.logprobs)
        for r in greedy.logprobs:  # greedy picks the most likely token, first in the top
            assert r.top[0] == (r.token, r.logprob)
            assert [lp for _, lp in r.top] == sorted((lp for _, lp in r.top), reverse=True)
        # the first token's log probabilities are the model's own
        with torch.inference_mode():
            logits = engine.model(torch.tensor([prompt])).logits[0, -1]
        want = torch.log_softmax(logits.float(), -1).topk(4)
        assert [t for t, _ in greedy.logprobs[0].top] == want.indices.tolist()
        got = [lp for _, lp in greedy.logprobs[0].top]
        assert got == pytest.approx(want.values.tolist(), abs=1e-4)
    finally:
        engine.stop()


def test_stop_strings_and_utf8_deltas(chatty_llama_dir):
    engine = _load(chatty_llama_dir)
    try:
        prompt = ChatPrompter(engine.tokenizer).encode([{"role": "user", "content": "Hello"}])
        full = engine.submit(prompt, SamplingParams(max_new_tokens=30)).text()
        assert len(full) > 6
        stop = full[3:6]
        cut = engine.submit(prompt, SamplingParams(max_new_tokens=30, stop=(stop,)))
        assert cut.text() == full[: full.index(stop)]
        assert cut.finish_reason == "stop"
    finally:
        engine.stop()
    # byte-level tokens of "é" (2 bytes) decode to U+FFFD alone: never emitted half
    tok = engine.tokenizer
    ids = tok("héllo wörld", add_special_tokens=False)["input_ids"]
    detok = Detokenizer(tok)
    deltas = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == "héllo wörld"
    assert not any("\ufffd" in d for d in deltas)


def test_engine_survives_a_failing_request(chatty_llama_dir, monkeypatch):
    engine = _load(chatty_llama_dir)
    try:
        prompt = ChatPrompter(engine.tokenizer).encode([{"role": "user", "content": "Hi"}])
        for method in ("_prefill", "_forward"):  # a failing prefill, then a failing decode step
            real = getattr(engine, method)
            calls = {"n": 0}

            def flaky(*a, real=real, calls=calls, **kw):
                calls["n"] += 1
                if calls["n"] == 1:
                    raise RuntimeError("boom")
                return real(*a, **kw)

            monkeypatch.setattr(engine, method, flaky)
            bad = engine.submit(prompt, SamplingParams(max_new_tokens=5))
            with pytest.raises(ChattuneError, match="boom"):
                bad.text()
            good = engine.submit(prompt, SamplingParams(max_new_tokens=5))
            assert good.completion_tokens == 0
            good.text()
            assert good.completion_tokens == 5 and engine.alive()
        assert engine.stats()["failed"] == 2
    finally:
        engine.stop()


def _submit_together(engine: Engine, prompts, budgets) -> list:
    """Submit while holding the engine's lock, so its thread finds them all pending at once."""
    with engine._cv:
        return [engine.submit(p, SamplingParams(max_new_tokens=n)) for p, n in
                zip(prompts, budgets, strict=True)]  # fmt: skip


@pytest.mark.parametrize("which", ["chatty_llama_dir", "chatty_phi3_dir"])
def test_requests_arriving_together_are_prefilled_in_one_forward(which, request):
    engine = _load(request.getfixturevalue(which), max_batch_size=8)
    try:
        prompter = ChatPrompter(engine.tokenizer)
        prompts = [prompter.encode([{"role": "user", "content": q}]) for q in QUESTIONS[:5]]
        assert len({len(p) for p in prompts}) > 2  # packed prompts of different lengths
        handles = _submit_together(engine, prompts, [7, 12, 5, 9, 10])
        for h in handles:
            h.text()
        stats = engine.stats()
        assert (stats["prefills"], stats["prefill_forwards"]) == (5, 1)
        for p, h in zip(prompts, handles, strict=True):
            assert h.token_ids == _reference(engine.model, p, len(h.token_ids), engine.eos_ids)
    finally:
        engine.stop()


def test_prefill_token_budget_lets_the_batch_step_between_prefills(chatty_llama_dir):
    engine = _load(chatty_llama_dir, prefill_tokens=1)
    try:
        prompter = ChatPrompter(engine.tokenizer)
        prompts = [prompter.encode([{"role": "user", "content": q}]) for q in QUESTIONS[:3]]
        handles = _submit_together(engine, prompts, [6, 6, 6])
        for h in handles:
            h.text()
        stats = engine.stats()
        assert (stats["prefills"], stats["prefill_forwards"]) == (3, 3)
        assert stats["joined_running"] == 2  # the 2nd and 3rd joined rows already decoding
        for p, h in zip(prompts, handles, strict=True):
            assert h.token_ids == _reference(engine.model, p, 6, engine.eos_ids)
    finally:
        engine.stop()


def test_a_bad_request_in_a_packed_prefill_fails_alone(chatty_llama_dir, monkeypatch):
    engine = _load(chatty_llama_dir)
    try:
        prompter = ChatPrompter(engine.tokenizer)
        prompts = [prompter.encode([{"role": "user", "content": q}]) for q in QUESTIONS[:3]]
        real = engine._prefill

        def poisoned(rows):
            if any(r.prompt == prompts[1] for r in rows):
                raise RuntimeError("bad prompt")
            return real(rows)

        monkeypatch.setattr(engine, "_prefill", poisoned)
        handles = _submit_together(engine, prompts, [5, 5, 5])
        with pytest.raises(ChattuneError, match="bad prompt"):
            handles[1].text()
        for i in (0, 2):
            handles[i].text()
            assert handles[i].token_ids == _reference(engine.model, prompts[i], 5, engine.eos_ids)
        assert engine.stats()["failed"] == 1 and engine.alive()
    finally:
        engine.stop()


def test_prompt_too_long_is_refused(chatty_llama_dir):
    engine = _load(chatty_llama_dir)
    try:
        with pytest.raises(InvalidParameter, match="context holds 256"):
            engine.submit([5] * 256, SamplingParams())
    finally:
        engine.stop()


def test_async_iteration_in_an_event_loop(chatty_llama_dir):
    import asyncio

    engine = _load(chatty_llama_dir)
    try:
        prompt = ChatPrompter(engine.tokenizer).encode([{"role": "user", "content": "Hi"}])
        sync_text = engine.submit(prompt, SamplingParams(max_new_tokens=8)).text()

        async def main() -> list[str]:
            handles = [engine.submit(prompt, SamplingParams(max_new_tokens=8)) for _ in range(3)]
            return ["".join([d async for d in h]) for h in handles]

        assert asyncio.run(main()) == [sync_text] * 3
    finally:
        engine.stop()


def test_join_while_decoding_does_not_wait_for_the_batch(chatty_llama_dir):
    """A short request submitted during a long one finishes first (no batch barrier)."""
    engine = _load(chatty_llama_dir, eos_ids=[])
    try:
        prompt = ChatPrompter(engine.tokenizer).encode([{"role": "user", "content": "Hi"}])
        long = engine.submit(prompt, SamplingParams(max_new_tokens=200))
        it = iter(long)
        next(it)
        short = engine.submit(prompt, SamplingParams(max_new_tokens=3))
        finished = threading.Event()
        t = threading.Thread(target=lambda: (short.text(), finished.set()))
        t.start()
        assert finished.wait(30)
        assert long.finish_reason is None  # still decoding when the short one is done
        long.cancel()
        list(it)
        t.join()
    finally:
        engine.stop()


def test_an_unexpected_error_fails_the_batch_not_the_engine(chatty_llama_dir, monkeypatch):
    engine = _load(chatty_llama_dir, max_batch_size=4)
    try:
        prompt = ChatPrompter(engine.tokenizer).encode([{"role": "user", "content": "Hi"}])
        real = engine._sort_rows
        monkeypatch.setattr(engine, "_sort_rows", lambda: (_ for _ in ()).throw(KeyError("bug")))
        hit = _submit_together(engine, [prompt, prompt[:-1]], [5, 5])
        for h in hit:
            with pytest.raises(ChattuneError, match="bug"):
                h.text()
        monkeypatch.setattr(engine, "_sort_rows", real)
        good = engine.submit(prompt, SamplingParams(max_new_tokens=5))
        good.text()
        assert good.completion_tokens == 5 and engine.alive()
        assert engine.stats()["failed"] == 2
    finally:
        engine.stop()


@pytest.mark.parametrize("which", ["chatty_llama_dir", "chatty_phi3_dir"])
def test_a_prefix_cache_prefills_only_the_rest_with_the_same_tokens(which, request):
    """A caller's keys and values of a prompt's first tokens (a perplexity pass's): the engine
    prefills only the tokens after them and decodes what a full prefill decodes."""
    from transformers import DynamicCache

    engine = _load(request.getfixturevalue(which), max_batch_size=4)
    try:
        prompter = ChatPrompter(engine.tokenizer)
        prompts = [prompter.encode([{"role": "user", "content": q}]) for q in QUESTIONS[:4]]
        params = SamplingParams(max_new_tokens=16)
        prefixes = []
        for p in prompts[:2]:  # two with a prefix (of different lengths), two without
            cache = DynamicCache()
            with torch.inference_mode():
                engine.model(
                    input_ids=torch.tensor([p[: len(p) - 2]]),
                    **{cache_keyword(engine.model): cache},
                )
            prefixes.append(cache)
        handles = [engine.submit(p, params, prefix=c) for p, c in
                   zip(prompts, [*prefixes, None, None], strict=True)]  # fmt: skip
        for p, h in zip(prompts, handles, strict=True):
            h.text()
            assert h.token_ids == _reference(engine.model, p, 16, engine.eos_ids)
        stats = engine.stats()
        assert stats["cached_prompt_tokens"] == sum(len(p) - 2 for p in prompts[:2])
        assert stats["prompt_tokens"] == sum(len(p) for p in prompts)
    finally:
        engine.stop()


def test_a_prefix_as_long_as_the_prompt_is_refused(chatty_llama_dir):
    from transformers import DynamicCache

    engine = _load(chatty_llama_dir)
    try:
        prompt = ChatPrompter(engine.tokenizer).encode([{"role": "user", "content": "Hello"}])
        cache = DynamicCache()
        with torch.inference_mode():
            engine.model(input_ids=torch.tensor([prompt]), **{cache_keyword(engine.model): cache})
        with pytest.raises(InvalidParameter, match=f"holds {len(prompt)} tokens") as err:
            engine.submit(prompt, SamplingParams(max_new_tokens=4), prefix=cache)
        assert "but its last" in err.value.fix
    finally:
        engine.stop()
