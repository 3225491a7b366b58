"""Tools an agent may call; the calculator is safe by construction.

    from jaxslm.tools import calculate, calculator, format_number

    calculate("1,200 * 3 + 0.1 + 0.2")   # 3600.3  (exact: Fraction arithmetic)
    calculate("7/2")                     # 3.5
    calculate("2**10 // 3 % 7")          # 5
    format_number(1/3)                   # "0.333333"
    calculator("$12 x 3")                # "36"      (a Tool: str -> str)
    calculator("1/0")                    # "Error: division by zero in '1/0'"

`calculate` never calls `eval`. It parses with `ast.parse(mode="eval")` and
walks the tree itself, accepting only:

  * int and float literals (no complex, no bool, no strings),
  * binary `+ - * / // % **` and unary `+ -`, with parentheses for grouping.

Before parsing it rewrites a few GSM8K-isms: thousands commas inside numbers
("1,200" -> 1200), "$" is dropped, "x", "X" or "×" between two operands means
`*` (so "0x10" is 0 * 10, never hex), "÷" means `/`, "^" means `**`, the
Unicode minus "−" means `-`, and a trailing "=" is ignored. `%` is modulo,
never percent.

Everything is bounded and checked *before* it is computed, so no input hangs,
eats memory or raises anything but `CalculatorError` (a `ValueError`; also for
non-str input):

  * at most `MAX_CHARS` characters (checked first, in O(1)),
  * at most `MAX_NESTING` levels of brackets (checked before `ast.parse`),
  * every literal and intermediate value has magnitude <= `MAX_MAGNITUDE`, and
    the numerator and denominator of every exact value at most `MAX_BITS` bits,
  * `a ** b` needs |b| <= `MAX_EXPONENT`; the result's size is estimated from
    logarithms and refused before computing (so `9**9**9**9` is instant),
  * division, `//` or `%` by zero and fractional powers of negatives refused.

Arithmetic is exact (`fractions.Fraction`): `0.1 + 0.2 == 0.3`. A result is an
int when integral, else a float. Fractional powers are exact when the root is
rational (`27 ** (1/3)` is 3) and a float otherwise (`2 ** 0.5`).
"""

from __future__ import annotations

import ast
import dataclasses
import math
import numbers
import re
from collections.abc import Callable
from fractions import Fraction

MAX_CHARS = 1000
MAX_NESTING = 50
MAX_MAGNITUDE = 10**30
MAX_EXPONENT = 100
MAX_BITS = 4096
_MAX_ROOT = 64  # exact q-th roots are tried for exponents p/q with q <= this

_BIN_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TIMES = re.compile(r"(?<=[\d.)])\s*[xX×]\s*(?=[\d.(])")
_OPEN, _CLOSE = "([{", ")]}"


class CalculatorError(ValueError):
  """The expression is not allowed, malformed, too big, or undefined (1/0)."""


def calculate(expr: str) -> int | float:
  """Exact value of the arithmetic expression `expr` (see the module docstring).

  Returns an int when the value is integral, else a float; raises
  `CalculatorError` naming the problem for anything else.
  """
  if not isinstance(expr, str):
    raise CalculatorError(f"calculator expects a str expression, got {type(expr).__name__}")
  if len(expr) > MAX_CHARS:
    raise CalculatorError(f"expression of {len(expr)} characters is longer than the "
                          f"limit of {MAX_CHARS}; split it into smaller steps")
  text = _normalize(expr)
  if not text:
    raise CalculatorError("empty expression; write arithmetic such as 3*12+4")
  _check_nesting(text)
  try:
    tree = ast.parse(text, mode="eval")
  except SyntaxError as e:
    raise CalculatorError(f"not an arithmetic expression: {expr!r} ({e.msg})") from None
  except (RecursionError, MemoryError, ValueError):  # ValueError: null bytes
    raise CalculatorError(f"expression {expr!r} cannot be parsed") from None
  value = _evaluate(tree.body, expr)
  return value.numerator if value.denominator == 1 else float(value)


def format_number(value: numbers.Real) -> str:
  """GSM8K-style text for a number: "36", "3.5", "-0.333333" (<= 6 decimals).

  Integral values have no ".0"; no thousands separators; trailing zeros of the
  6-decimal rounding are stripped and "-0" becomes "0".
  """
  if isinstance(value, numbers.Integral):
    return str(int(value))
  if isinstance(value, Fraction) and value.denominator == 1:
    return str(value.numerator)
  value = float(value)
  if not math.isfinite(value):
    return str(value)
  text = f"{value:.6f}".rstrip("0").rstrip(".")
  return "0" if text in ("-0", "") else text


@dataclasses.dataclass(frozen=True)
class Tool:
  """A named function from text to text; calling it never raises.

      tool = Tool("echo", "repeats its input", lambda s: s)
      tool("hi")      # "hi"

  Any exception from `fn` becomes an observation "Error: <problem>", so the
  agent sees what went wrong and can try again.
  """
  name: str
  description: str
  fn: Callable[[str], str]

  def __call__(self, input: str) -> str:  # noqa: A002 (the agent's word for it)
    try:
      out = self.fn(input)
    except Exception as e:  # a tool failure is an observation, never a crash
      message = str(e) or "no message"
      if not isinstance(e, CalculatorError):
        message = f"{type(e).__name__}: {message}"
      return f"Error: {message}"
    return out if isinstance(out, str) else str(out)


def _calculator(expr: str) -> str:
  return format_number(calculate(expr))


calculator = Tool(
    name="calculator",
    description=("evaluates arithmetic with + - * / // % ** and parentheses, "
                 "e.g. calculator[(3 + 4) * 12 / 5]"),
    fn=_calculator,
)


# ------------------------------------------------------------------ internals
def _normalize(expr: str) -> str:
  text = expr.strip().replace("$", "").replace("÷", "/").replace("−", "-").replace("^", "**")
  text = _THOUSANDS.sub("", text)
  text = _TIMES.sub("*", text)
  return text.rstrip().rstrip("=").strip()


def _check_nesting(text: str) -> None:
  depth = 0
  for ch in text:
    if ch in _OPEN:
      depth += 1
      if depth > MAX_NESTING:
        raise CalculatorError(f"brackets nested deeper than {MAX_NESTING} levels")
    elif ch in _CLOSE:
      depth -= 1


def _evaluate(root: ast.expr, expr: str) -> Fraction:
  """Post-order walk with an explicit stack (no recursion limit to hit)."""
  values: list[Fraction] = []
  stack: list[tuple[ast.AST, bool]] = [(root, False)]
  while stack:
    node, ready = stack.pop()
    if isinstance(node, ast.Constant):
      values.append(_literal(node.value))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
      if ready:
        values.append(-values.pop() if isinstance(node.op, ast.USub) else values.pop())
      else:
        stack += [(node, True), (node.operand, False)]
    elif isinstance(node, ast.BinOp) and isinstance(node.op, _BIN_OPS):
      if ready:
        rhs = values.pop()
        values.append(_checked(_binop(type(node.op), values.pop(), rhs, expr)))
      else:
        stack += [(node, True), (node.right, False), (node.left, False)]
    else:
      raise CalculatorError(f"{_describe(node)} is not allowed in {expr!r}; only numbers, "
                            "+ - * / // % ** and parentheses are")
  return values.pop()


def _describe(node: ast.AST) -> str:
  if isinstance(node, ast.Name):
    return f"the name {node.id!r}"
  if isinstance(node, (ast.BinOp, ast.UnaryOp)):
    return f"the operator {type(node.op).__name__}"
  return f"a {type(node).__name__} expression"


def _literal(value: object) -> Fraction:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise CalculatorError(f"the literal {value!r} is not a number; only int and float "
                          "literals are allowed")
  if isinstance(value, float):
    if not math.isfinite(value):
      raise CalculatorError(f"the literal {value!r} is not a finite number")
    value = Fraction(repr(value))  # "0.1" -> 1/10 exactly, not the nearest double
  return _checked(Fraction(value))


def _checked(value: Fraction) -> Fraction:
  if abs(value) > MAX_MAGNITUDE:
    raise CalculatorError(f"a value's magnitude exceeds {float(MAX_MAGNITUDE):g}")
  if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
    raise CalculatorError(f"a value needs more than {MAX_BITS} bits of precision")
  return value


def _binop(op: type, a: Fraction, b: Fraction, expr: str) -> Fraction:
  if op is ast.Add:
    return a + b
  if op is ast.Sub:
    return a - b
  if op is ast.Mult:
    return a * b
  if op is ast.Pow:
    return _power(a, b, expr)
  if b == 0:
    raise CalculatorError(f"division by zero in {expr!r}")
  if op is ast.Div:
    return a / b
  if op is ast.FloorDiv:
    return Fraction(a // b)
  return a % b


def _power(base: Fraction, exp: Fraction, expr: str) -> Fraction:
  if abs(exp) > MAX_EXPONENT:
    raise CalculatorError(f"exponent {float(exp):g} is larger than {MAX_EXPONENT} in magnitude")
  if base == 0:
    if exp < 0:
      raise CalculatorError(f"division by zero (0 to a negative power) in {expr!r}")
    return Fraction(1) if exp == 0 else Fraction(0)
  if base < 0 and exp.denominator != 1:
    raise CalculatorError(f"a fractional power of the negative number {float(base):g} in "
                          f"{expr!r} is not a real number")
  # Size of the result, estimated before computing it (logs never overflow).
  log10 = float(exp) * (math.log10(base.numerator if base > 0 else -base.numerator)
                        - math.log10(base.denominator))
  if log10 > math.log10(MAX_MAGNITUDE) + 1e-9:
    raise CalculatorError(f"a power in {expr!r} exceeds {float(MAX_MAGNITUDE):g}")
  bits = abs(exp.numerator) * max(base.numerator.bit_length(), base.denominator.bit_length())
  if exp.denominator == 1:
    if bits > MAX_BITS:
      raise CalculatorError(f"a power in {expr!r} needs more than {MAX_BITS} bits of precision")
    return base ** exp.numerator
  root = _exact_root(base, exp.denominator) if bits <= MAX_BITS * exp.denominator else None
  if root is not None:
    return root ** exp.numerator
  approx = float(base) ** float(exp)
  if not math.isfinite(approx) or approx == 0.0:
    raise CalculatorError(f"a power in {expr!r} is out of range")
  return Fraction(approx)


def _exact_root(x: Fraction, q: int) -> Fraction | None:
  """The positive rational r with r**q == x, if there is one (x > 0)."""
  if q > _MAX_ROOT:
    return None
  num, den = _int_root(x.numerator, q), _int_root(x.denominator, q)
  return None if num is None or den is None else Fraction(num, den)


def _int_root(n: int, q: int) -> int | None:
  """The integer r >= 1 with r**q == n, if there is one (integer Newton)."""
  x = 1 << -(-n.bit_length() // q)  # an upper bound on the root
  while True:
    y = ((q - 1) * x + n // x ** (q - 1)) // q
    if y >= x:
      return x if x**q == n else None
    x = y
