"""Synthetic grade-school math word problems in GSM8K's answer format.

The embedded default pretraining corpus (no download, works offline) and a task
small models can learn under GRPO. Problems are a pure function of (seed, index):

    gen = SyntheticMath(seed=0, max_steps=4)
    p = gen.problem(123)              # any process can make any slice
    p.question, p.answer              # "...", "... 3 * 12 = <<3*12=36>>36 pens.\\n#### 36"
    verify(p)                         # True: every <<expr=value>> re-checked exactly
    docs = iter_documents(seed=0, n=1000)   # "Question: ...\\nAnswer: ..." strings

Each reasoning step is one line with a calculator annotation `<<expr=value>>`
followed by the value; the last line is `#### <answer>`. Values are computed by
evaluating the written expressions with `evaluate` (exact, over + - * / and
parentheses; never Python's eval), and every problem passes `verify` before it
is returned.
"""
from __future__ import annotations

import dataclasses
import itertools
import numbers
import random
import re
from collections.abc import Iterator
from fractions import Fraction
from jaxslm.errors import UserError

DEFAULT_TEMPLATE = "Question: {question}\nAnswer: {answer}"
_MAX_EXPR_CHARS = 256

# ----------------------------------------------------------------- arithmetic
_TOKEN = re.compile(r"(\d+(?:\.\d+)?)|([-+*/()])|(\S)")


def _number(text: str) -> int | Fraction:
    return int(text) if text.isdigit() else Fraction(text)


def evaluate(expr: str) -> int | Fraction:
    """Exact value of `expr`: numbers, + - * /, unary minus and parentheses only.

    Returns an int, or a Fraction when a division is not exact. Anything else
    (names, calls, `**`, `%`) raises ValueError; nothing is ever passed to eval.
    """
    if not isinstance(expr, str):
        raise TypeError(f"evaluate expects a str expression, got {type(expr).__name__}")
    if len(expr) > _MAX_EXPR_CHARS:
        raise ValueError(f"expression of {len(expr)} chars is longer than {_MAX_EXPR_CHARS}")
    tokens = []  # numbers as int / Fraction, operators as str
    for num, op, bad in _TOKEN.findall(expr):
        if bad:
            raise ValueError(f"not an arithmetic expression: {expr!r} (unexpected {bad!r}); "
                             "only numbers, + - * / and parentheses are allowed")
        tokens.append(_number(num) if num else op)
    i = 0

    def take(*ops):
        nonlocal i
        if i < len(tokens) and isinstance(tokens[i], str) and tokens[i] in ops:
            i += 1
            return tokens[i - 1]
        return None

    def sum_():
        value = product()
        while op := take("+", "-"):
            value = value + product() if op == "+" else value - product()
        return value

    def product():
        value = unary()
        while op := take("*", "/"):
            rhs = unary()
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise ValueError(f"division by zero in {expr!r}")
            else:  # stay in ints while divisions are exact: 10x faster than Fraction
                exact = isinstance(value, int) and isinstance(rhs, int) and value % rhs == 0
                value = value // rhs if exact else Fraction(value) / rhs
        return value

    def unary():
        nonlocal i
        if op := take("+", "-"):
            return unary() if op == "+" else -unary()
        if take("("):
            value = sum_()
            if not take(")"):
                raise ValueError(f"unbalanced parentheses in {expr!r}")
            return value
        if i < len(tokens) and not isinstance(tokens[i], str):
            i += 1
            return tokens[i - 1]
        raise ValueError(f"malformed arithmetic expression {expr!r} (token {i + 1})")

    value = sum_()
    if i != len(tokens):
        raise ValueError(f"malformed arithmetic expression {expr!r} (token {i + 1})")
    return value


# --------------------------------------------------------- answers, checking
_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_FINAL = re.compile(r"^####\s*(-?[\d,]*\.?\d+)\s*$")


def extract_final_answer(answer_text: str) -> str | None:
    """The number after the last `####` (commas stripped), or None if absent."""
    found = re.findall(r"####\s*(-?[\d,]*\.?\d+)", answer_text)
    return found[-1].replace(",", "") if found else None


def _answer_error(answer: str) -> tuple[str | None, list[int | Fraction]]:
    """(why the solution text is wrong or None, the annotated step values)."""
    lines = answer.strip().split("\n")
    final = _FINAL.match(lines[-1].strip())
    if final is None:
        return f"last line {lines[-1]!r} is not '#### <number>'", []
    values = []
    for line in lines[:-1]:
        for m in _ANNOTATION.finditer(line):
            expr, shown = m.group(1), m.group(2).replace(",", "")
            try:
                value, claimed = evaluate(expr), _number(shown)
            except (ValueError, ZeroDivisionError) as e:
                return f"bad annotation {m.group(0)!r}: {e}", values
            if value != claimed:
                return f"{expr} is {value}, not {shown}", values
            after = line[m.end():]
            if not after.startswith(m.group(2)) or re.match(r"\.?\d", after[len(m.group(2)):]):
                return f"annotation {m.group(0)!r} is not followed by its value", values
            values.append(value)
    if not values:
        return "no <<expr=value>> annotations", values
    if _number(final.group(1).replace(",", "")) != values[-1]:
        return f"final answer {final.group(1)} != last step value {values[-1]}", values
    return None, values


def verify(problem: Problem | str) -> bool:
    """Whether every annotation evaluates to its value, each value follows its
    annotation, and `#### N` equals the last step (and a Problem's final_answer)."""
    answer = problem if isinstance(problem, str) else problem.answer
    error, values = _answer_error(answer)
    if error is not None or isinstance(problem, str):
        return error is None
    return (values[-1] == problem.final_answer and len(values) == problem.num_steps
            and extract_final_answer(answer) == str(problem.final_answer))


@dataclasses.dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # GSM8K-style solution, one annotated step per line, then "#### N"
    final_answer: int
    num_steps: int
    theme: str = ""


def to_text(problem: Problem, template: str = DEFAULT_TEMPLATE) -> str:
    """The training format, by default "Question: ...\\nAnswer: ..."."""
    return template.format(question=problem.question, answer=problem.answer)


# ------------------------------------------------------------ vocabulary
_PEOPLE = [(n, "she") for n in "Ava Maya Lena Sofia Grace Nora Zoe Emma Priya Aisha Mei Lucia Hana "
           "Chloe Ruth Tara Julia Amara Ines Olga".split()] + \
          [(n, "he") for n in "Liam Omar Noah Ethan Ravi Diego Kenji Samuel Leo Tomas Arjun Felix "
           "Hugo Mateo Kofi Ivan Ben Jonah Yusuf Carlos".split()]


class _Solution:
    """Records annotated steps; every value comes from evaluating its expression."""

    def __init__(self, name: str, he: str):
        him, his = ("him", "his") if he == "he" else ("her", "her")
        self.fields = dict(name=name, he=he, him=him, his=his, He=he.title(), His=his.title())
        self.question, self.lines = [], []

    def say(self, fmt: str, **kw) -> None:
        if self.question and fmt.startswith("{name} "):  # "Ava buys ... She buys ..."
            fmt = "{He}" + fmt[6:]
        self.question.append(fmt.format(**self.fields, **kw))

    def step(self, expr: str, fmt: str, money: bool = False, **kw) -> int:
        value = evaluate(expr)
        if value.denominator != 1 or value < 0:
            raise RuntimeError(f"template wrote {expr}={value}; expected a non-negative integer")
        value = int(value)
        pretty = re.sub(r"([-+*/])", r" \1 ", expr)
        calc = f"{pretty} = {'$' if money else ''}<<{expr}={value}>>{value}"
        self.lines.append(fmt.format(**self.fields, **kw, calc=calc))
        return value


# ------------------------------------------------------------ templates
# Each template is fn(rng, n, sol) -> final value, writing exactly n steps.
_CHAIN = {  # a running quantity changed by n events; kind -> [(question, answer) phrasings]
    "collection": dict(
        start="{name} has {v} {item}.", ask="How many {item} does {name} have now?", items=[
            "stickers", "marbles", "baseball cards", "seashells", "stamps", "beads", "postcards",
            "toy cars", "crayons", "comic books"],
        add=[("{He} buys {k} more.", "After buying {k} more, {he} has {calc} {item}."),
             ("{friend} gives {him} {k} more.", "With {friend}'s gift {he} has {calc} {item}.")],
        sub=[("{He} gives {k} to {friend}.", "After giving {k} away, {he} has {calc} {item}."),
             ("{He} loses {k} of them.", "After losing {k}, {he} has {calc} {item} left.")],
        pack=[("{He} buys {a} packs with {b} {item} in each pack.",
               "The packs add {a} * {b}, so {he} has {calc} {item}.")],
        mul=[("Then the number of {item} {he} has becomes {mw} as large.",
              "{He} now has {calc} {item}.")],
        half=[("{He} gives half of {his} {item} to {friend}.", "{He} keeps {calc} {item}.")],
        part=[("{He} sorts them into {k} equal piles and keeps one pile.",
               "One pile holds {calc} {item}.")]),
    "savings": dict(
        money=True, start="{name} has ${v} in a piggy bank.", items=["dollars"],
        ask="How many dollars does {name} have now?",
        add=[("{He} earns ${k} {chore}.", "After earning ${k}, {he} has {calc}."),
             ("{friend} pays {him} ${k} back.", "Getting ${k} back, {he} has {calc}.")],
        sub=[("{He} spends ${k} on {thing}.", "After spending ${k}, {he} has {calc} left.")],
        pack=[("{He} saves ${b} a week for {a} weeks.", "After {a} weeks {he} has {calc}.")],
        mul=[("A gift makes {his} savings {mw} as large.", "{His} savings grow to {calc}.")],
        half=[("{He} spends half of {his} money on {thing}.", "{He} has {calc} left.")]),
    "bakery": dict(
        start="{name}'s bakery has {v} {item} on the shelf.",
        ask="How many {item} are on the shelf now?",
        items=["muffins", "cookies", "bagels", "cupcakes", "rolls", "croissants", "pies"],
        add=[("{name} bakes {k} more.", "After baking {k} more there are {calc} {item}."),
             ("A delivery brings {k} more.", "With the delivery there are {calc} {item}.")],
        sub=[("Customers buy {k} of them.", "After selling {k} there are {calc} {item} left."),
             ("{k} of them are burnt and thrown away.", "Throwing {k} away leaves {calc} {item}.")],
        pack=[("{name} bakes {a} trays with {b} {item} on each tray.",
               "The trays add {a} * {b}, so there are {calc} {item}.")],
        half=[("A school buys half of them.", "Half remain: {calc} {item}.")],
        part=[("{name} splits them equally among {k} shops and keeps one share.",
               "One share is {calc} {item}.")]),
}
_CHORES = ["mowing lawns", "walking dogs", "washing cars", "selling lemonade", "raking leaves"]
_THINGS = ["a book", "a kite", "a board game", "a backpack", "a puzzle", "art supplies"]


def _chain(rng, n, sol, theme):
    t = _CHAIN[theme]
    friends = [p for p, _ in _PEOPLE if p != sol.fields["name"]]
    sol.fields.update(item=rng.choice(t["items"]))
    v = rng.randint(6, 40)
    sol.say(t["start"], v=v)
    for _ in range(n):
        ok = {"add": v <= 800, "sub": v >= 3, "pack": v <= 700, "mul": 2 * v <= 400,
              "half": v % 2 == 0 and v >= 4, "part": v >= 6 and any(v % k == 0 for k in (3, 4, 5))}
        kind = rng.choice([k for k in ok if ok[k] and k in t])
        q, a = rng.choice(t[kind])
        kw = dict(k=rng.randint(2, 25), a=rng.randint(2, 6), b=rng.randint(2, 12),
                  friend=rng.choice(friends), chore=rng.choice(_CHORES), thing=rng.choice(_THINGS))
        if kind == "sub":
            kw["k"] = rng.randint(1, min(v - 2, 30))
        m = rng.choice([x for x in (2, 3) if v * x <= 400]) if kind == "mul" else 2
        if kind == "part":
            kw["k"] = rng.choice([x for x in (3, 4, 5) if v % x == 0])
        k, a_, b = kw["k"], kw["a"], kw["b"]
        expr = {"add": f"{v}+{k}", "sub": f"{v}-{k}", "pack": f"{v}+{a_}*{b}", "mul": f"{v}*{m}",
                "half": f"{v}/2", "part": f"{v}/{k}"}[kind]
        kw["mw"] = {2: "twice", 3: "three times"}[m]
        sol.say(q, **kw)
        v = sol.step(expr, a, money=t.get("money", False), **kw)
    sol.say(t["ask"])
    return v


def _ages(rng, n, sol):
    names = rng.sample([p for p, _ in _PEOPLE], n + 1)
    v = rng.randint(4, 40)
    sol.say(f"{names[0]} is {v} years old.")
    for prev, new in zip(names, names[1:]):
        ok = {"older": v <= 80, "younger": v >= 8, "twice": 2 * v <= 90, "thrice": 3 * v <= 90,
              "half": v % 2 == 0 and v >= 4, "third": v % 3 == 0 and v >= 6}
        kind = rng.choice([k for k in ok if ok[k]])
        k = rng.randint(2, min(15, v - 2) if kind == "younger" else 15)
        q, expr = {"older": (f"{new} is {k} years older than {prev}.", f"{v}+{k}"),
                   "younger": (f"{new} is {k} years younger than {prev}.", f"{v}-{k}"),
                   "twice": (f"{new} is twice as old as {prev}.", f"{v}*2"),
                   "thrice": (f"{new} is three times as old as {prev}.", f"{v}*3"),
                   "half": (f"{new} is half as old as {prev}.", f"{v}/2"),
                   "third": (f"{new} is a third as old as {prev}.", f"{v}/3")}[kind]
        sol.say(q)
        v = sol.step(expr, f"{new} is {{calc}} years old.")
    sol.say(f"How old is {names[-1]}?")
    return v


_PRODUCTS = {  # parts q*r; their total when several; then maybe (kind, question, ask, answer)
    "shopping": dict(
        money=True, q=(2, 9), r=(1, 15), things=[
            "notebooks", "pens", "apples", "candles", "mugs", "socks", "markers", "bananas",
            "erasers", "postcards"],
        part=("{name} buys {q} {thing} for ${r} each.", "The {thing} cost {calc}."),
        total="In total {he} spends {calc}.", ask="How much money does {name} spend?",
        extra=("change", "{He} pays with a ${B} bill.", "How much change does {he} get?",
               "{His} change is {calc}.")),
    "travel": dict(
        q=(2, 8), r=(20, 65), things=[f"day {i}" for i in range(1, 31)], ordered=True,
        part=("On {thing}, {name} drives for {q} hours at {r} miles per hour.",
              "On {thing} {he} drives {calc} miles."),
        total="Altogether {he} drives {calc} miles.", ask="How many miles does {name} drive?",
        extra=("sub", "The whole trip is {B} miles long.", "How many miles are left to drive?",
               "{He} still has {calc} miles to go.")),
    "earnings": dict(
        money=True, q=(2, 10), r=(5, 20), things=_CHORES + ["tutoring", "babysitting"],
        part=("{name} spends {q} hours {thing} at ${r} per hour.", "{Thing} pays {calc}."),
        total="{He} earns {calc} in total.", ask="How much money does {name} earn?",
        extra=("sub", "{He} wants a bike that costs ${B}.", "How much more money does {he} need?",
               "{He} still needs {calc}.")),
    "garden": dict(
        q=(2, 9), r=(3, 12),
        things=["tomato", "carrot", "lettuce", "pepper", "bean", "onion", "pumpkin"],
        part=("{name} plants {q} rows of {thing} plants with {r} in each row.",
              "That is {calc} {thing} plants."),
        total="{He} plants {calc} plants altogether.", ask="How many plants does {name} plant?",
        extra=("sub", "The garden has room for {B} plants.",
               "How many more plants fit in the garden?", "There is room for {calc} more.")),
    "recipes": dict(  # q is the number of batches, computed by a first step
        r=(2, 5), things=["flour", "sugar", "milk", "oats", "rice", "water", "yogurt"],
        part=("Each batch needs {r} cups of {thing}.", "{He} needs {calc} cups of {thing}."),
        total="Altogether {he} needs {calc} cups.", ask="How many cups does {name} need?",
        extra=("mul", "Each cup of these ingredients costs ${B}.",
               "How many dollars do the ingredients cost?", "They cost {calc}.")),
}


def _products(rng, n, sol, theme):
    t = _PRODUCTS[theme]
    steps = n
    if theme == "recipes":
        dish, s = rng.choice([("cookies", 12), ("pancakes", 6), ("muffins", 8), ("rolls", 10)])
        b = rng.randint(2, 6)
        sol.say(f"A recipe makes {s} {dish}. {{name}} wants to make {b * s} {dish}.")
        q = sol.step(f"{b * s}/{s}", "{He} makes {calc} batches.")
        steps -= 1
        if steps == 0:
            sol.say("How many batches does {he} make?")
            return q
    opts = [(m, x) for m in range(1, min(steps, len(t["things"])) + 1) for x in (0, 1)
            if m + (m > 1) + x == steps]
    m, extra = rng.choice(opts)
    picks = range(m) if t.get("ordered") else sorted(rng.sample(range(len(t["things"])), m))
    values, money = [], t.get("money", False)
    for thing in (t["things"][i] for i in picks):
        q = q if theme == "recipes" else rng.randint(*t["q"])
        kw = dict(thing=thing, Thing=thing[0].upper() + thing[1:], q=q, r=rng.randint(*t["r"]))
        sol.say(t["part"][0], **kw)
        values.append(sol.step(f"{q}*{kw['r']}", t["part"][1], money=money, **kw))
    total = sol.step("+".join(map(str, values)), t["total"], money=money) if m > 1 else values[0]
    if not extra:
        sol.say(t["ask"].replace("?", " in total?" if m > 1 else "?"))
        return total
    kind, question, ask, answer = t["extra"]
    if kind == "mul":
        B = rng.randint(2, 5)
        expr = f"{total}*{B}"
    else:  # change from the smallest bill that covers it, or a target a bit above the total
        B = next(b for b in (10, 20, 50, 100, 200, 500, 1000, 5000) if b > total) \
            if kind == "change" else total + rng.randint(5, 90)
        expr = f"{B}-{total}"
    sol.say(question, B=B)
    value = sol.step(expr, answer, money=money or kind == "mul")
    sol.say(ask)
    return value


def _sharing(rng, n, sol):
    item = rng.choice(["candies", "grapes", "crackers", "pretzels", "cherries", "nuts", "plums"])
    people = rng.choice(["friends", "classmates", "cousins", "teammates"])
    sol.fields.update(item=item, people=people)
    friends = [p for p, _ in _PEOPLE if p != sol.fields["name"]]
    if n == 1:
        k, each = rng.randint(2, 9), rng.randint(2, 15)
        v = k * each
        sol.say("{name} has {v} {item} and shares them equally among {k} {people}.", v=v, k=k)
    else:
        a, b = rng.randint(2, 9), rng.randint(3, 20)
        sol.say("{name} buys {a} bags of {item} with {b} {item} in each bag.", a=a, b=b)
        v = sol.step(f"{a}*{b}", "{He} has {calc} {item}.")
        k = rng.randint(2, 8) if n > 2 else rng.choice([d for d in range(2, 10) if v % d == 0
                                                        and v >= 2 * d])
        for i in range(n - 2):
            last = i == n - 3  # the last change makes the total divisible by k
            eat = [v % k + k * j for j in range(3)] if last else [rng.randint(1, max(1, v // 3))]
            eat = [x for x in eat if 0 < x <= 30 and v - x >= (2 * k if last else 2)]
            if eat and (v > 300 or rng.random() < 0.5):
                x = rng.choice(eat)
                sol.say(rng.choice(["{He} eats {x} of them.", "{He} gives {x} to {friend}."]),
                        x=x, friend=rng.choice(friends))
                v = sol.step(f"{v}-{x}", "That leaves {him} {calc} {item}.", x=x)
            else:
                x = ((-v) % k or k) + k * rng.randint(0, 1) if last else rng.randint(2, 20)
                sol.say(rng.choice(["{friend} gives {him} {x} more.", "{He} buys {x} more."]),
                        x=x, friend=rng.choice(friends))
                v = sol.step(f"{v}+{x}", "With {x} more, {he} has {calc} {item}.", x=x)
        sol.say("{He} shares them equally among {k} {people}.", k=k)
    sol.say("How many {item} does each of them get?")
    return sol.step(f"{v}/{k}", "Each gets {calc} {item}.")


_PACKING = [("pencils", ["box", "carton", "truck"]), ("cupcakes", ["tray", "rack", "van"]),
            ("soap bars", ["pack", "crate", "pallet"]), ("tennis balls", ["can", "box", "truck"]),
            ("juice bottles", ["case", "pallet", "truck"]), ("candles", ["bag", "crate", "van"])]


def _packing(rng, n, sol):
    item, levels = rng.choice(_PACKING)
    opts = [(p, L, x) for p in (0, 1) for L in (1, 2, 3) for x in (0, 1) if p + L + x == n]
    produce, L, extra = rng.choice(opts)
    sizes = [rng.randint(2, 12) for _ in range(L)]
    total = rng.randint(2, 9)
    for s in sizes:
        total *= s
    sol.fields.update(item=item)
    if produce:
        h = rng.choice([d for d in range(2, 13) if total % d == 0 and d < total])
        sol.say("A factory makes {r} {item} per hour for {h} hours.", r=total // h, h=h)
        v = sol.step(f"{total // h}*{h}", "The factory makes {calc} {item}.")
    else:
        sol.say("A factory has {v} {item}.", v=total)
        v = total
    below = item
    for size, unit in zip(sizes, levels):
        sol.say("They are packed {s} {below} to a {unit}." if below == item else
                "The {below} are loaded {s} to a {unit}.", s=size, below=below, unit=unit)
        below = unit + ("es" if unit.endswith("x") else "s")
        v = sol.step(f"{v}/{size}", "That fills {calc} {units}.", units=below)
    if extra:
        p = rng.randint(2, 30)
        sol.say("Shipping costs ${p} per {unit}. How much does it cost to ship all the {units}?",
                unit=levels[L - 1], units=below, p=p)
        return sol.step(f"{v}*{p}", "Shipping costs {calc}.", money=True)
    sol.say("How many {units} are filled?", units=below)
    return v


_TEMPLATES = [(f"chain:{t}", lambda r, n, s, t=t: _chain(r, n, s, t), 10 ** 9) for t in _CHAIN] + \
    [(f"products:{t}", lambda r, n, s, t=t: _products(r, n, s, t),
      len(_PRODUCTS[t]["things"]) + 2 + (t == "recipes")) for t in _PRODUCTS] + \
    [("ages", _ages, len(_PEOPLE) - 1), ("sharing", _sharing, 10 ** 9), ("packing", _packing, 5)]


# ------------------------------------------------------------ generator
# Held-out problems start at this index: training draws 0, 1, 2, ... (fine-tuning
# and GRPO alike), evaluation HELDOUT_OFFSET + 0, 1, ..., so the two never meet.
HELDOUT_OFFSET = 1_000_000


class SyntheticMath:
    """Unlimited seeded word problems; `problem(i)` is a pure function of (seed, i)."""

    def __init__(self, seed: int, max_steps: int = 4, min_steps: int = 1):
        for label, value in (("seed", seed), ("max_steps", max_steps), ("min_steps", min_steps)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise UserError(f"{label}={value!r}: expected an int")
        seed, max_steps, min_steps = int(seed), int(max_steps), int(min_steps)
        if seed < 0:
            raise UserError(f"seed={seed}: expected a non-negative int")
        if max_steps < 1:
            raise UserError(f"max_steps={max_steps}: expected >= 1 reasoning steps")
        if not 1 <= min_steps <= max_steps:
            raise UserError(f"min_steps={min_steps}: expected 1 <= min_steps <= "
                             f"max_steps={max_steps}")
        self.seed, self.max_steps, self.min_steps = seed, max_steps, min_steps

    def problem(self, index: int) -> Problem:
        if not isinstance(index, numbers.Integral) or isinstance(index, bool) or index < 0:
            raise UserError(f"index={index!r}: expected a non-negative int")
        index = int(index)
        # str seeds go through SHA-512: identical in every process, no hash randomization.
        rng = random.Random(f"jaxslm.synthetic:{self.seed}:{index}")
        n = rng.randint(self.min_steps, self.max_steps)
        theme, fn, _ = rng.choice([t for t in _TEMPLATES if t[2] >= n])
        sol = _Solution(*rng.choice(_PEOPLE))
        final = fn(rng, n, sol)
        problem = Problem(question=" ".join(sol.question),
                          answer="\n".join(sol.lines + [f"#### {final}"]),
                          final_answer=final, num_steps=n, theme=theme)
        if not verify(problem):
            raise RuntimeError(f"synthetic problem (seed={self.seed}, index={index}) failed "
                               f"verification: {_answer_error(problem.answer)[0]}\n{problem}")
        return problem

    def __iter__(self) -> Iterator[Problem]:
        return map(self.problem, itertools.count())


def to_react(problem: Problem) -> str:
    """The same solution as a thought / action / observation trace, the default
    format of `jaxslm.agent` (with an empty header), so a model pretrained on it
    can run the agent loop with the calculator tool:

        Question: ...
        Thought: The pens cost 3 * 12
        Action: calculator[3*12]
        Observation: 36
        ...
        Thought: I now know the answer.
        Final Answer: 36
    """
    parts = [f"Question: {problem.question}"]
    for line in problem.answer.split("\n")[:-1]:
        for m in _ANNOTATION.finditer(line):
            thought = line[:m.start()].rstrip(" =$") or "Compute it"
            value = m.group(2)
            parts += [f"Thought: {thought}", f"Action: calculator[{m.group(1)}]",
                      f"Observation: {value}"]
            break   # one calculation per line
    parts += ["Thought: I now know the answer.", f"Final Answer: {problem.final_answer}"]
    return "\n".join(parts)


FORMATS = {"gsm8k": to_text, "react": to_react}


def iter_documents(seed: int, n: int | None = None, *, max_steps: int = 4,
                   min_steps: int = 1, fmt: str = "gsm8k") -> Iterator[str]:
    """Documents for problems 0, 1, ... (n None: unlimited), written by
    `to_text` ("gsm8k") or `to_react` ("react")."""
    if n is not None and (not isinstance(n, int) or n < 0):
        raise UserError(f"n={n!r}: expected None (unlimited) or a non-negative int")
    if fmt not in FORMATS:
        raise UserError(f"synthetic format {fmt!r}: expected one of {sorted(FORMATS)}")
    gen = SyntheticMath(seed, max_steps=max_steps, min_steps=min_steps)
    indices = itertools.count() if n is None else range(n)
    return (FORMATS[fmt](gen.problem(i)) for i in indices)
