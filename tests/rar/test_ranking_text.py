"""RAR's ranking prompt and the reading of a ranker's answer, on hand-worked answers: clean,
quoted with commas inside names, bare, unknown, duplicate and missing names, truncated, no
list, and the counts over many answers."""

import pytest
from paths import CONFIGS

from jaxrank.configs import load_config_file
from jaxrank.rar.ranking_text import parse_ranking, ranking_prompt, ranking_report

RAR_CONFIGS = CONFIGS / "rar"
CANDIDATES = ["Boeing 707", "Airbus A320", "Cessna 172", "DC-3", "Tupolev, Tu-154"]


def test_prompt_is_the_papers_with_a_list_of_quoted_names():
    prompt = ranking_prompt(CANDIDATES[:2])
    assert prompt == (
        "Please play the role of a classification expert, and sort the provided categories "
        "from high to low according to the top 2 similarity with the input image. Here are "
        "the optional categories:['Boeing 707', 'Airbus A320']."
    )


def test_prompts_of_the_released_files():
    """Few_shot/retrieve_and_rerank.py writes "{top_k} " after "provided" (top_k 5 there);
    finetune/build_finetuning_data.ipynb names the aircraft domain and has no count there."""
    names = CANDIDATES[:5]
    listed = "['Boeing 707', 'Airbus A320', 'Cessna 172', 'DC-3', 'Tupolev, Tu-154']"
    assert ranking_prompt(names, "fewshot") == (
        "Please play the role of a classification expert, and sort the provided 5 categories "
        "from high to low according to the top 5 similarity with the input image. Here are "
        f"the optional categories:{listed}."
    )
    assert ranking_prompt(names, "finetune") == (
        "Please play the role of a aircraft classification expert, and sort the provided "
        "categories from high to low according to the top 5 similarity with the input image. "
        f"Here are the optional categories:{listed}."
    )
    with pytest.raises(ValueError, match="fewshot"):
        ranking_prompt(names, "paper")


def test_each_rar_config_names_the_prompt_of_its_numbers_file():
    configs = {
        name: load_config_file(RAR_CONFIGS / f"{name}.py")
        for name in ("digits", "fewshot", "fewshot_coop")
    }
    prompts = {n: (c.ranker.train_prompt, c.ranker.eval_prompt) for n, c in configs.items()}
    assert prompts == {
        "digits": ("generic", "generic"),
        "fewshot": ("generic", "fewshot"),
        "fewshot_coop": ("finetune", "fewshot"),
    }


@pytest.mark.parametrize(
    ("answer", "order", "counts"),
    [
        # A full clean answer, as a list literal with a comma inside one name.
        (
            "['DC-3', 'Tupolev, Tu-154', 'Boeing 707', 'Cessna 172', 'Airbus A320']",
            (3, 4, 0, 2, 1),
            (0, 0, 0),
        ),
        # Text around the list, bare names, odd case and spacing, a trailing full stop.
        (
            "Sure. The ranking is [cessna  172, boeing 707., DC-3] and that is all [DC-3].",
            (2, 0, 3, 1, 4),
            (0, 0, 2),
        ),
        # Unknown and duplicate names are skipped and counted; missing ones follow in order.
        ('["Concorde", "Airbus A320", "airbus a320", "DC-3"]', (1, 3, 0, 2, 4), (1, 1, 3)),
    ],
)
def test_ranked_answers(answer, order, counts):
    ranking = parse_ranking(answer, CANDIDATES)
    assert ranking.outcome == "ranked"
    assert ranking.order == order and ranking.prediction == order[0]
    assert (ranking.unknown, ranking.duplicates, ranking.missing) == counts


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        ("The image shows a Cessna 172.", "no_list"),
        ("['Cessna 172', 'Boeing", "truncated"),
        ("[]", "no_known_name"),
        ("[Concorde, Spitfire]", "no_known_name"),
    ],
)
def test_format_errors_keep_the_retrieval_order(answer, outcome):
    ranking = parse_ranking(answer, CANDIDATES)
    assert ranking.outcome == outcome
    assert ranking.order == tuple(range(len(CANDIDATES))) and ranking.prediction == 0


def test_report_counts_outcomes_and_names():
    answers = ["[DC-3, Concorde, DC-3]", "no list", "['Boeing 707'"]
    report = ranking_report(parse_ranking(a, CANDIDATES) for a in answers)
    assert report == {
        "ranked": 1,
        "no_list": 1,
        "truncated": 1,
        "no_known_name": 0,
        "unknown_names": 1,
        "duplicate_names": 1,
        "missing_names": 4,
    }
    with pytest.raises(ValueError, match="at least one candidate"):
        parse_ranking("[a]", [])


def test_names_without_commas_and_names_that_differ_in_case():
    """Quoted names are read however they are separated (as the released code's regex reads
    them), an exact name wins over a normalised one, and names that normalise alike stay
    distinct candidates."""
    boeing, dc3 = CANDIDATES.index("Boeing 707"), CANDIDATES.index("DC-3")
    assert parse_ranking("['Boeing 707' 'DC-3']", CANDIDATES).order[:2] == (boeing, dc3)
    cased = ["cat", "Cat", "CAT"]
    assert parse_ranking("['Cat', 'CAT', 'cat']", cased).order == (1, 2, 0)
    assert parse_ranking("['cAt', 'CaT']", cased).order == (0, 1, 2)
