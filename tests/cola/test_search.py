"""MCTS over chains: finds the best chain of a constructed reward within its budget; prefix reuse is exact."""

import pytest
import torch

from memlm.cola import chain
from memlm.cola.rewards import PrefixForward, TeacherForcedReward, greedy_answer
from memlm.cola.search import mcts, neighbours


def edit_distance(a, b) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def closeness_to(target):
    return lambda path: max(0.0, 1.0 - edit_distance(path, target) / len(target))


constructed_reward = closeness_to([0, 1, 1, 2, 3, 5])


# Budgets at which 20 of 20 seeds found the target when this was written (4 layers, blocks of one layer):
# one action from the full chain (layer 1 skipped), and two (layer 1 skipped, layer 2 twice).
@pytest.mark.parametrize("target, budget", [([0, 2, 3], 200), ([0, 2, 2, 3], 800)])
def test_search_finds_the_best_chain_within_its_budget(target, budget):
    calls = []

    def reward(path):
        calls.append(tuple(path))
        return closeness_to(target)(path)

    result = mcts(reward, num_layers=4, num_simulations=budget, max_block=1, length_penalty=0.0, seed=0)
    assert result.best_path == target and result.best_reward == 1.0
    assert result.evaluations == len(calls) == len(set(calls)) <= budget  # each chain is scored once
    again = mcts(closeness_to(target), num_layers=4, num_simulations=budget, max_block=1, length_penalty=0.0, seed=0)
    assert again.best_path == result.best_path and again.rewards == result.rewards  # seeded


def test_budget_and_length_bounds_hold():
    result = mcts(constructed_reward, num_layers=6, num_simulations=20, max_length=7, seed=1)
    assert result.evaluations <= 20 and all(1 <= len(p) <= 7 for p in result.rewards)
    assert tuple(range(6)) in result.rewards  # the full model is always scored
    assert all(0 <= i < 6 for p in result.rewards for i in p)


def test_children_are_the_papers_actions():
    children = set(neighbours((0, 1, 2), max_block=4, max_length=6))
    assert (0, 2) in children and (2,) in children and () not in children  # skip 1 and 2 layers, never all
    assert (0, 1, 1, 2) in children and (0, 1, 2, 1, 2, 2) not in children  # repeat k=1 r=1; no such edit
    assert (0, 1, 2, 1, 2) in children and (0, 0, 0, 0, 1, 2) in children  # k=2 r=1; k=1 r=3
    assert all(len(c) <= 6 for c in children)


@pytest.mark.parametrize("bad, message", [(dict(num_simulations=0), "num_simulations"),
                                          (dict(num_layers=0), "num_layers"), (dict(max_block=0), "max_block"),
                                          (dict(max_length=3), "max_length=3")])
def test_bad_search_arguments(bad, message):
    with pytest.raises(ValueError, match=message):
        mcts(constructed_reward, **{"num_layers": 4, **bad})


@pytest.mark.parametrize("name", ["llama", "memlm-titans"])
def test_prefix_reuse_gives_the_rewards_of_recomputation(name, build):
    model = build(name)
    torch.manual_seed(1)
    prompt = torch.randint(1, 61, (12,))
    paths = [[0, 1, 2, 3], [0, 1, 2, 2], [0, 1, 3], [0, 1, 1, 2, 3], [0, 1], [3, 2, 1, 0], [0, 1, 2, 3]]
    for kind in ("correct", "likelihood", "agreement"):
        answer = greedy_answer(model, prompt, 4) if kind == "correct" else None
        reused = TeacherForcedReward(model, prompt, answer, kind=kind, answer_length=4)
        values = [reused(p) for p in paths]
        fresh = [TeacherForcedReward(model, prompt, reused.answer_ids, kind=kind)(p) for p in paths]
        assert values == pytest.approx(fresh, abs=1e-6)
        assert reused.layers_saved > 0
    full = TeacherForcedReward(model, prompt, None, kind="agreement", answer_length=4)
    assert full([0, 1, 2, 3]) == 1.0  # the full model agrees with its own greedy answer


def test_prefix_forward_matches_the_chained_model(build):
    model = build("qwen2-sliding")
    ids = torch.randint(1, 61, (1, 15))
    forward = PrefixForward(model, ids)
    for path in ([0, 1, 2], [0, 1, 2, 3], [0, 1, 3, 3]):
        with torch.no_grad(), chain(model, path):
            expected = model(ids).logits[0]
        torch.testing.assert_close(forward.logits(path), expected, atol=1e-5, rtol=1e-5)
    assert forward.layers_saved == 0 + 3 + 2 and forward.layers_run == 3 + 1 + 2


def test_search_with_a_model_reward_reports_prefix_reuse(build):
    model = build("llama")
    prompt = torch.randint(1, 61, (10,))
    reward = TeacherForcedReward(model, prompt, None, kind="likelihood", answer_length=3)
    result = mcts(reward, num_layers=4, num_simulations=30, seed=0)
    assert result.layers_saved > 0 and 0 < result.best_reward <= 1
    assert result.best_reward == max(result.rewards.values())


def test_generated_answer_reward_uses_the_extractor():
    from transformers import LlamaConfig, LlamaForCausalLM

    from memlm.cola import GeneratedAnswerReward
    from memlm.tokenization import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=3, num_attention_heads=4)).eval()
    prompt = "Q: 2+2=? A:"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad(), chain(model, [0, 2]):
        text = tokenizer.decode(model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:],
                                skip_special_tokens=True)
    assert GeneratedAnswerReward(model, tokenizer, prompt, gold=text[:3], max_new_tokens=6,
                                 extractor=lambda t: t[:3])([0, 2]) == 1.0
    assert GeneratedAnswerReward(model, tokenizer, prompt, gold="never", max_new_tokens=6)([0, 2]) == 0.0

