"""Arithmetic: answer an arithmetic question, optionally calling a calculator tool first."""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction

from agentgym.message_env import Message, MessageEnv

_ANSWER = re.compile(r"ANSWER:\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_CALC = re.compile(r"CALC:\s*([^\n]+)", re.IGNORECASE)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}


def safe_eval(expr: str, max_len: int = 200, max_abs: int = 10**12) -> Fraction:
    """Evaluate ``+ - * /`` over integers and parentheses, exactly; anything else raises ``ValueError``."""
    if len(expr) > max_len:
        raise ValueError(f"expression longer than {max_len} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {expr.strip()!r}") from e

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ValueError("division by zero")
            out = _OPS[type(node.op)](left, right)
            if abs(out) > max_abs:
                raise ValueError("result too large")
            return out
        raise ValueError(f"only integers, + - * / and parentheses are allowed: {expr.strip()!r}")

    return ev(tree.body)


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{float(x):.6g}"


class ArithmeticEnv(MessageEnv):
    """Compute an expression such as ``37 * 12 + 5``. The policy may call a calculator before it answers.

    Protocol, stated in the prompt: a reply containing ``CALC: <expression>`` gets the value back as a ``tool``
    message; a reply containing ``ANSWER: <number>`` ends the episode. Anything else gets a reminder of the
    protocol. Reward: 1 for the right answer, 0 otherwise (``tool_cost`` is subtracted per calculator call).
    ``info["success"]`` at the end.

    Args:
        num_operands: operands in the expression (2 or more).
        max_operand: operands are drawn from ``[1, max_operand]``.
        ops: operators to draw from (``+``, ``-``, ``*``).
        max_turns: replies allowed, calculator calls included.
        tool_cost: subtracted from the reward per calculator call.
        allow_tool: when False, the prompt asks for the answer directly and CALC is refused.
        answer_format: ``"strict"`` (only ``ANSWER: <number>`` answers) or ``"last_number"`` (a reply with neither
            marker answers with its last number and ends the episode: a curriculum for a model that does not yet
            follow the protocol, e.g. SmolLM2-135M-Instruct, which never writes ``ANSWER:`` unprompted).
    """

    def __init__(
        self,
        num_operands: int = 3,
        max_operand: int = 50,
        ops: str = "+-*",
        max_turns: int = 4,
        tool_cost: float = 0.0,
        allow_tool: bool = True,
        answer_format: str = "strict",
    ):
        if num_operands < 2:
            raise ValueError(f"num_operands must be at least 2, got {num_operands}")
        if answer_format not in ("strict", "last_number"):
            raise ValueError(f"answer_format must be 'strict' or 'last_number', got {answer_format!r}")
        self.answer_format = answer_format
        if not ops or set(ops) - set("+-*"):
            raise ValueError(f"ops must be a non-empty subset of '+-*', got {ops!r}")
        self.num_operands, self.max_operand, self.ops = num_operands, max_operand, ops
        self.max_turns, self.tool_cost, self.allow_tool = max_turns, tool_cost, allow_tool
        self.expression, self.answer, self.turn = "", Fraction(0), 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[list[Message], dict]:
        super().reset(seed=seed)
        nums = [int(self.np_random.integers(1, self.max_operand + 1)) for _ in range(self.num_operands)]
        parts = [str(nums[0])]
        for n in nums[1:]:
            parts += [self.ops[int(self.np_random.integers(len(self.ops)))], str(n)]
        self.expression = " ".join(parts)
        if options and "expression" in options:
            self.expression = str(options["expression"])
        self.answer = safe_eval(self.expression)
        self.turn = 0
        how = (
            "You may use a calculator: reply 'CALC: <expression>' to get a value. "
            if self.allow_tool
            else ""
        ) + "When you know the result, reply 'ANSWER: <number>'."
        msgs = [
            {"role": "system", "content": f"Solve the arithmetic problem. {how}"},
            {"role": "user", "content": f"What is {self.expression}?"},
        ]
        return msgs, {"expression": self.expression, "answer": _fmt(self.answer)}

    def step(self, text: str) -> tuple[list[Message], float, bool, bool, dict]:
        self.turn += 1
        last = self.turn >= self.max_turns
        answer = _ANSWER.search(text)
        calc = _CALC.search(text)
        if answer is None and calc is None and self.answer_format == "last_number":
            numbers = _NUMBER.findall(text)
            if numbers:
                success = Fraction(numbers[-1]) == self.answer
                return [], float(success), True, False, {"success": success, "answer": _fmt(self.answer)}
        if answer is not None:
            success = Fraction(answer.group(1)) == self.answer
            return [], float(success), True, False, {"success": success, "answer": _fmt(self.answer)}
        reward = 0.0
        if calc is not None and self.allow_tool:
            reward = 0.0 - self.tool_cost
            try:
                msg = {"role": "tool", "content": _fmt(safe_eval(calc.group(1)))}
            except ValueError as e:
                msg = {"role": "tool", "content": f"error: {e}"}
        else:
            msg = {"role": "user", "content": "Reply 'CALC: <expression>' or 'ANSWER: <number>'."}
        if last:
            return [], reward, True, False, {"success": False, "answer": _fmt(self.answer)}
        return [msg], reward, False, False, {}
