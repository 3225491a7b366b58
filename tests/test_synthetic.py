"""Tests for jaxslm.data.synthetic: the procedural GSM8K-style problem generator."""
import collections
import dataclasses
import itertools
import re
import subprocess
import sys
import time
from fractions import Fraction

import pytest

from jaxslm.data.synthetic import (
    Problem,
    SyntheticMath,
    evaluate,
    extract_final_answer,
    iter_documents,
    to_text,
    verify,
)

N = 2000


@pytest.fixture(scope="module")
def problems():
    gen = SyntheticMath(seed=0, max_steps=4)
    return [gen.problem(i) for i in range(N)]


# ------------------------------------------------------------------ evaluator
@pytest.mark.parametrize("expr,value", [
    ("2+3*4", 14), ("(2+3)*4", 20), ("10-4-3", 3), ("100/10/5", 2), ("2*(3+4)/7-1", 1),
    ("-3--2", -1), ("((7))", 7), (" 12 * 3 ", 36), ("7/2", Fraction(7, 2)), ("0.2*50", 10),
    ("1/3+1/3+1/3", 1), ("2-(3-(4-5))", -2),
])
def test_evaluate_precedence_and_parentheses(expr, value):
    assert evaluate(expr) == value


@pytest.mark.parametrize("expr", [
    "__import__('os')", "2**3", "1+", "(1", "1)", "2 3", "", "abs(-1)", "1/0", "4/(2-2)",
    "3%2", "1e3", "x+1", "1 if 1 else 2", "9" * 300,
])
def test_evaluate_rejects_non_arithmetic(expr):
    with pytest.raises(ValueError):
        evaluate(expr)


def test_evaluate_exact_types():
    assert isinstance(evaluate("6/3"), int)
    assert evaluate("1/3") == Fraction(1, 3)


# ------------------------------------------------------------------ problems
def test_every_problem_verifies(problems):
    for p in problems:
        assert verify(p), p
        assert verify(p.answer)


def test_answer_format(problems):
    for p in problems:
        lines = p.answer.split("\n")
        assert lines[-1] == f"#### {p.final_answer}"
        assert extract_final_answer(p.answer) == str(p.final_answer)
        step_lines = lines[:-1]
        assert len(step_lines) == p.num_steps
        for line in step_lines:  # exactly one annotation per step, followed by its value
            m = re.fullmatch(r"[^<>]* \$?<<([-+*/\d]+)=(\d+)>>(\d+)[^<>]*", line)
            assert m is not None, line
            assert m.group(2) == m.group(3)
        assert isinstance(p.final_answer, int) and 0 <= p.final_answer < 100_000
        assert p.question.endswith("?") and "<<" not in p.question and "{" not in p.question


def test_tampered_answers_fail_verify(problems):
    p = next(p for p in problems if p.num_steps >= 2)
    m = re.search(r"<<([^=]+)=(\d+)>>(\d+)", p.answer)
    wrong = str(int(m.group(2)) + 1)
    tampered_value = p.answer.replace(m.group(0), f"<<{m.group(1)}={wrong}>>{wrong}", 1)
    tampered_follow = p.answer.replace(m.group(0), f"<<{m.group(1)}={m.group(2)}>>{wrong}", 1)
    wrong_final = p.answer.rsplit("\n", 1)[0] + f"\n#### {p.final_answer + 1}"
    no_final = p.answer.rsplit("\n", 1)[0]
    for bad in (tampered_value, tampered_follow, wrong_final, no_final, "#### 3",
                "It is <<__import__('os')=1>>1.\n#### 1"):
        assert not verify(bad), bad
        assert not verify(dataclasses.replace(p, answer=bad))
    assert not verify(dataclasses.replace(p, final_answer=p.final_answer + 1))
    assert not verify(dataclasses.replace(p, num_steps=p.num_steps + 1))


def test_verify_accepts_gsm8k_style_text():
    text = ("Natalie sold 48/2 = <<48/2=24>>24 clips in May.\n"
            "She paid 0.2 x 50 = $<<0.2*50=10>>10.\n"
            "Altogether 48+24 = <<48+24=72>>72 clips.\n#### 72")
    assert verify(text)
    assert not verify(text.replace("#### 72", "#### 73"))


def test_extract_final_answer():
    assert extract_final_answer("a\n#### 1,234") == "1234"
    assert extract_final_answer("a\n#### -5") == "-5"
    assert extract_final_answer("no answer here") is None


def test_seeded_and_pure(problems):
    again = SyntheticMath(seed=0, max_steps=4)
    assert [again.problem(i) for i in (1999, 5, 0)] == [problems[1999], problems[5], problems[0]]
    other = [SyntheticMath(seed=1).problem(i) for i in range(50)]
    assert sum(a != b for a, b in zip(other, problems)) >= 45
    assert list(itertools.islice(iter(again), 100)) == problems[:100]


def test_same_problems_in_a_fresh_process(problems):
    code = ("from jaxslm.data.synthetic import SyntheticMath; "
            "print(repr(SyntheticMath(seed=0).problem(1234).answer))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == repr(problems[1234].answer)


def test_diversity_and_step_spread(problems):
    assert len({p.question for p in problems}) > 0.95 * N
    steps = collections.Counter(p.num_steps for p in problems)
    assert set(steps) == {1, 2, 3, 4}
    assert min(steps.values()) > N / 8
    themes = collections.Counter(p.theme for p in problems)
    assert len(themes) >= 10 and min(themes.values()) > N / 40
    assert {len(set(p.question.split())) > 3 for p in problems} == {True}


@pytest.mark.parametrize("min_steps,max_steps", [(1, 1), (3, 3), (2, 6), (5, 10)])
def test_step_bounds(min_steps, max_steps):
    gen = SyntheticMath(seed=7, max_steps=max_steps, min_steps=min_steps)
    ps = [gen.problem(i) for i in range(300)]
    counts = collections.Counter(p.num_steps for p in ps)
    assert set(counts) == set(range(min_steps, max_steps + 1))
    assert all(verify(p) and p.answer.count("<<") == p.num_steps for p in ps)


def test_many_steps_stay_small():
    gen = SyntheticMath(seed=3, max_steps=30, min_steps=20)
    for i in range(100):
        p = gen.problem(i)
        assert verify(p) and p.final_answer < 100_000


@pytest.mark.parametrize("kwargs,match", [
    (dict(seed=0, max_steps=0), "max_steps=0"),
    (dict(seed=0, max_steps=3, min_steps=4), "min_steps=4"),
    (dict(seed=0, min_steps=0), "min_steps=0"),
    (dict(seed=-1), "seed=-1"),
    (dict(seed=1.5), "seed=1.5"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticMath(**kwargs)
    with pytest.raises(ValueError, match=match):
        iter_documents(kwargs.pop("seed"), 3, **kwargs)


def test_bad_index_and_count():
    with pytest.raises(ValueError, match="index=-1"):
        SyntheticMath(0).problem(-1)
    with pytest.raises(ValueError, match="n=-2"):
        iter_documents(0, -2)


# ------------------------------------------------------------------ documents
def test_documents(problems):
    docs = list(iter_documents(0, 200))
    assert len(docs) == 200
    assert docs[7] == to_text(problems[7])
    for doc, p in zip(docs, problems):
        assert doc.startswith("Question: ") and "\nAnswer: " in doc
        assert doc == f"Question: {p.question}\nAnswer: {p.answer}"
    unlimited = iter_documents(0)
    assert list(itertools.islice(unlimited, 200)) == docs
    assert next(unlimited) == to_text(problems[200])
    assert list(iter_documents(0, 0)) == []
    custom = to_text(problems[0], template="Q: {question}\nA: {answer}")
    assert custom.startswith("Q: ") and custom.endswith(f"#### {problems[0].final_answer}")


def test_problem_is_frozen(problems):
    with pytest.raises(dataclasses.FrozenInstanceError):
        problems[0].final_answer = 3
    assert isinstance(problems[0], Problem)


def test_generation_speed():
    gen = SyntheticMath(seed=11)
    start = time.perf_counter()
    for i in range(2000):
        gen.problem(i)
    assert time.perf_counter() - start < 2.0  # ~0.4 s on one core; 10,000 in ~2 s
