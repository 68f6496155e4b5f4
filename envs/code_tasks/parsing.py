"""Families: reverse Polish notation evaluation, balanced brackets."""

from __future__ import annotations

import random

from envs.code_tasks.family import Family

# --- RPN ------------------------------------------------------------------------------------------------


def rpn_impl(tokens):
    stack = []
    for tok in tokens:
        if tok in ("+", "-", "*", "/"):
            b = stack.pop()
            a = stack.pop()
            if tok == "+":
                stack.append(a + b)
            elif tok == "-":
                stack.append(a - b)
            elif tok == "*":
                stack.append(a * b)
            else:
                q = abs(a) // abs(b)  # truncate toward zero
                stack.append(q if (a >= 0) == (b >= 0) else -q)
        else:
            stack.append(int(tok))
    return stack[-1]


def rpn_wrong(tokens):
    stack = []
    for tok in tokens:
        if tok in ("+", "-", "*", "/"):
            a = stack.pop()  # bug: operands popped in the wrong order
            b = stack.pop()
            if tok == "+":
                stack.append(a + b)
            elif tok == "-":
                stack.append(a - b)
            elif tok == "*":
                stack.append(a * b)
            else:
                stack.append(int(a / b) if b else 0)
        else:
            stack.append(int(tok))
    return stack[-1]


def random_rpn(rng: random.Random, depth: int) -> list[str]:
    """Tokens of a random expression tree whose divisions never divide by zero."""
    if depth == 0 or rng.random() < 0.25:
        return [str(rng.randint(-20, 20))]
    op = rng.choice("+-*/")
    left, right = random_rpn(rng, depth - 1), random_rpn(rng, depth - 1)
    if op == "/" and rpn_impl(right) == 0:
        right = [str(rng.choice([-7, -3, 2, 5]))]
    return left + right + [op]


def _rpn_inputs(rng, params, n):
    fixed = [[["7", "-2", "/"]], [["3", "8", "-"]], [["4"]]]  # truncation toward zero, operand order, a number
    return fixed[:2] + [[random_rpn(rng, rng.randint(1, 4))] for _ in range(n - 3)] + fixed[2:]


RPN = Family(
    name="rpn", entry="eval_rpn", signature="eval_rpn(tokens: list[str]) -> int",
    describe=lambda p: ("Evaluate an arithmetic expression in reverse Polish notation. Tokens are integers or "
                        "one of + - * /. Division is integer division truncating toward zero (7 / -2 = -3). "
                        "The expression is always valid and never divides by zero. "
                        'Example: eval_rpn(["2", "1", "+", "3", "*"]) == 9.'),
    sample_params=lambda rng: {}, make_inputs=_rpn_inputs, solve=lambda p, tokens: rpn_impl(tokens),
    impl=rpn_impl, wrong_impl=rpn_wrong)

# --- balanced brackets ------------------------------------------------------------------------------------


def balanced_impl(s, pairs):
    closing = {pairs[i + 1]: pairs[i] for i in range(0, len(pairs), 2)}
    opening = set(closing.values())
    stack = []
    for ch in s:
        if ch in opening:
            stack.append(ch)
        elif ch in closing:
            if not stack or stack.pop() != closing[ch]:
                return False
    return not stack


def balanced_wrong(s, pairs):
    depth = 0  # bug: counts depth only, ignoring bracket types
    for ch in s:
        if ch in pairs[0::2]:
            depth += 1
        elif ch in pairs[1::2]:
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _balanced_string(rng, pairs, length):
    out, stack = [], []
    while len(out) + len(stack) < length or stack:
        if stack and (rng.random() < 0.5 or len(out) + len(stack) >= length):
            out.append(stack.pop())
        else:
            k = rng.randrange(len(pairs) // 2)
            out.append(pairs[2 * k])
            stack.append(pairs[2 * k + 1])
    return "".join(out)


def _bracket_inputs(rng, params, n):
    pairs = params["pairs"]
    inputs = [[""], [pairs[0] + pairs[3] + pairs[2] + pairs[1]]]  # empty; crossed types e.g. "([)]"
    while len(inputs) < n:
        s = list(_balanced_string(rng, pairs, 2 * rng.randint(1, 8)))
        if rng.random() < 0.5:  # corrupt: swap two characters or change one bracket's type
            i, j = rng.randrange(len(s)), rng.randrange(len(s))
            s[i], s[j] = s[j], s[i]
            if rng.random() < 0.5:
                s[i] = rng.choice(pairs)
        inputs.append(["".join(s)])
    rng.shuffle(inputs)
    return inputs


BRACKETS = Family(
    name="brackets", entry="is_balanced", signature="is_balanced(s: str) -> bool",
    describe=lambda p: (f"Return True if the string is correctly bracketed using the pairs "
                        f"{', '.join(p['pairs'][i:i + 2] for i in range(0, len(p['pairs']), 2))}: every opening "
                        "bracket is closed by the matching type in the right order. Other characters are ignored. "
                        f"Example: is_balanced({p['pairs'][:2] * 2!r}) is True."),
    sample_params=lambda rng: {"pairs": rng.choice(["()[]", "()[]{}", "<>()", "{}[]<>"])},
    make_inputs=_bracket_inputs, solve=lambda p, s: balanced_impl(s, p["pairs"]),
    impl=balanced_impl, wrong_impl=balanced_wrong, param_names=("pairs",))
