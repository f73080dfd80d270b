"""Few-shot prompts: exact zero- and k-shot strings from one task definition."""
import pytest

from t5x_lite.data import prompts

TASK = prompts.FewShotTask(description="Translate English to French.")
DEMOS = [("cheese", "fromage"), ("dog", "chien"), ("cat", "chat"), ("house", "maison"),
         ("bread", "pain")]


def test_zero_shot_prompt():
    assert TASK.prompt("sea otter") == (
        "Translate English to French.\n\nInput: sea otter\nOutput: ")
    assert TASK.prompt("sea otter", DEMOS, k=0) == TASK.prompt("sea otter")


def test_two_shot_prompt_from_the_same_task():
    assert TASK.prompt("sea otter", DEMOS[:2]) == (
        "Translate English to French.\n\n"
        "Input: cheese\nOutput: fromage\n\n"
        "Input: dog\nOutput: chien\n\n"
        "Input: sea otter\nOutput: ")


def test_custom_separators_and_no_description():
    task = prompts.FewShotTask(input_prefix="Q: ", output_prefix="A:", example_separator="\n",
                               input_output_separator=" ")
    assert task.prompt("2+2?", [("1+1?", " 2")]) == "Q: 1+1? A: 2\nQ: 2+2? A:"


def test_demonstrations_are_a_seeded_choice():
    first = TASK.prompt("sea otter", DEMOS, k=2, seed=3)
    assert first == TASK.prompt("sea otter", DEMOS, k=2, seed=3)
    assert first.count("Input: ") == 3
    picks = {tuple(prompts.select_demonstrations(DEMOS, 2, seed)) for seed in range(20)}
    assert len(picks) > 1  # the seed matters
    for pick in picks:
        assert len(set(pick)) == 2 and set(pick) <= set(DEMOS)


def test_select_excludes_the_query_and_checks_k():
    for seed in range(10):
        chosen = prompts.select_demonstrations(DEMOS, 4, seed, exclude=["dog"])
        assert ("dog", "chien") not in chosen
    # The query is never its own demonstration.
    assert "Input: dog\nOutput: chien" not in TASK.prompt("dog", DEMOS, k=4)
    with pytest.raises(ValueError, match="only 4"):
        prompts.select_demonstrations(DEMOS, 5, 0, exclude=["dog"])
    with pytest.raises(ValueError, match="k=6"):
        TASK.prompt("x", DEMOS, k=6)
