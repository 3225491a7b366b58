from __future__ import annotations

import time

import pytest

from jaxslm.tools import (MAX_CHARS, MAX_NESTING, CalculatorError, Tool, calculate,
                          calculator, format_number)


@pytest.mark.parametrize("expr, expected", [
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("2 * 3 ** 2", 18),
    ("2 ** 3 ** 2", 512),          # right associative
    ("-2 ** 2", -4),               # unary minus binds looser than **
    ("(-2) ** 2", 4),
    ("--3", 3),
    ("+4 - -4", 8),
    ("7 / 2", 3.5),
    ("8 / 2", 4),
    ("7 // 2", 3),
    ("-7 // 2", -4),               # floor, as in Python
    ("7 % 3", 1),
    ("-7 % 3", 2),
    ("0.1 + 0.2", 0.3),            # exact, not 0.30000000000000004
    ("1.5 * 4", 6),
    ("2 ** -2", 0.25),
    ("4 ** 0.5", 2),
    ("27 ** (1/3)", 3),            # exact rational root
    ("0 ** 0", 1),
    ("1,200 + 30", 1230),
    ("1,000,000 / 4", 250000),
    ("$12.50 * 4", 50),
    ("3 x 4", 12),
    ("3×4", 12),
    ("12 ÷ 4", 3),
    ("2^10", 1024),
    ("5 − 7", -2),
    ("3 * 12 =", 36),
    ("  ( ( 3 ) ) ", 3),
    ("10**30", 10**30),
])
def test_values(expr, expected):
  result = calculate(expr)
  assert result == expected
  assert isinstance(result, int) == (expected == int(expected))


def test_irrational_power_is_a_float():
  assert calculate("2 ** 0.5") == pytest.approx(2**0.5)
  assert isinstance(calculate("2 ** 0.5"), float)


ADVERSARIAL = [
    "__import__('os')",
    "__import__('os').system('true')",
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "9**9**9**9",
    "10**10**10",
    "2**1000000",
    "2**-1000000",
    "1" * 10_000_000,
    "(" * 100_000 + "1" + ")" * 100_000,
    "[" * 100_000 + "]" * 100_000,
    "(-9) ** " + "9" * 900,
    "1e308*1e308",
    "1e999",
    "10**31",
    "10**15 * 10**16",
    "((1/3)**100)**100",
    "lambda: 1",
    "f'{1}'",
    "'1' * 5",
    "b'1'",
    "1 if 1 else 2",
    "[1, 2]",
    "(1, 2)",
    "{1: 2}",
    "x",
    "abs(-1)",
    "1 < 2",
    "1 << 100000",
    "1 & 3",
    "~1",
    "not 1",
    "True + 1",
    "None",
    "...",
    "1j * 1j",
    "1 +",
    "",
    "   ",
    "1 / 0",
    "1 // 0",
    "1 % 0",
    "0 ** -1",
    "(-8) ** (1/3)",
    "(-1) ** 0.5",
    "1\x00",
    "1; 2",
]


@pytest.mark.parametrize("expr", ADVERSARIAL, ids=lambda e: repr(e[:30]))
def test_adversarial_inputs_refused_quickly(expr):
  start = time.perf_counter()
  with pytest.raises(CalculatorError):
    calculate(expr)
  assert time.perf_counter() - start < 0.1


def test_nesting_limit_is_exact():
  assert calculate("(" * MAX_NESTING + "1" + ")" * MAX_NESTING) == 1
  with pytest.raises(CalculatorError, match="nested"):
    calculate("(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1))


def test_long_input_refused_before_parsing():
  assert calculate("+".join(["1"] * (MAX_CHARS // 2))) == MAX_CHARS // 2
  huge = "1" * 10_000_000
  start = time.perf_counter()
  with pytest.raises(CalculatorError, match="longer"):
    calculate(huge)
  assert time.perf_counter() - start < 0.01


def test_deep_unary_chain_without_brackets():
  assert calculate("-" * 998 + "1") == 1


@pytest.mark.parametrize("bad", [None, 3, b"1+1", ["1"]])
def test_non_str_input(bad):
  with pytest.raises(CalculatorError, match="str"):
    calculate(bad)


def test_errors_name_the_problem():
  with pytest.raises(CalculatorError, match="division by zero"):
    calculate("5 / (2 - 2)")
  with pytest.raises(CalculatorError, match="'os'|Call"):
    calculate("__import__('os')")
  with pytest.raises(CalculatorError, match="exponent"):
    calculate("9**9**9**9")


@pytest.mark.parametrize("value, text", [
    (36, "36"),
    (-36, "-36"),
    (3.0, "3"),
    (3.5, "3.5"),
    (-3.5, "-3.5"),
    (1 / 3, "0.333333"),
    (2 / 3, "0.666667"),
    (-1e-9, "0"),
    (0.1 + 0.2, "0.3"),
    (1234567.0, "1234567"),
    (1e20, "100000000000000000000"),
    (10**30, "1000000000000000000000000000000"),
])
def test_format_number(value, text):
  assert format_number(value) == text


def test_calculator_tool():
  assert calculator.name == "calculator"
  assert calculator("1,200 * 3") == "3600"
  assert calculator("10 / 4") == "2.5"
  assert calculator("1 / 3") == "0.333333"


@pytest.mark.parametrize("expr", ADVERSARIAL, ids=lambda e: repr(e[:30]))
def test_calculator_tool_never_raises(expr):
  out = calculator(expr)
  assert out.startswith("Error: ") and len(out) > len("Error: ")


def test_tool_turns_any_exception_into_an_observation():
  def broken(_: str) -> str:
    raise KeyError("missing")

  tool = Tool("broken", "always fails", broken)
  out = tool("anything")
  assert out.startswith("Error: ") and "KeyError" in out and "missing" in out
  assert Tool("num", "returns a number", lambda s: 42)("x") == "42"
  assert calculator(None).startswith("Error: ")
