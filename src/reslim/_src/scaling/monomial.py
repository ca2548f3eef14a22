"""Monomials ``c * L^a * M^b * D^e * d_in^f * d_out^g * alpha^h`` (and the attention head sizes
``r``, ``r_v``): the unit of every scaling rule.

A rule is written as a short expression, e.g. ``"alpha*sqrt(D)/(L*M)"`` or ``"D^-0.5"``, and
kept as a coefficient plus exponents, so that the exponent of any rule along any axis can be
read off (the coordinate check compares measured exponents against these).
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any

SYMBOLS = ("L", "M", "D", "d_in", "d_out", "alpha", "r", "r_v")


@dataclass(frozen=True)
class Monomial:
    """``coef * prod(symbol ** exponent)`` over :data:`SYMBOLS`; exponents kept sparse."""

    coef: float = 1.0
    powers: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.coef) and self.coef > 0):
            raise ValueError(f"a scaling rule needs a positive finite coefficient, got {self.coef}")
        clean: dict[str, float] = {}
        for sym, exp in self.powers:
            if sym not in SYMBOLS:
                raise ValueError(f"unknown symbol {sym!r} in scaling rule; known: {', '.join(SYMBOLS)}")
            clean[sym] = clean.get(sym, 0.0) + float(exp)
        object.__setattr__(
            self, "powers", tuple((s, clean[s]) for s in SYMBOLS if clean.get(s, 0.0) != 0.0)
        )

    # --- construction -------------------------------------------------------------------
    @classmethod
    def parse(cls, expr: Monomial | float | int | str) -> Monomial:
        """Parse ``"alpha*sqrt(D)/(L*M)"``, ``"D^-0.5"``, ``"2*L**0.5"`` or a number."""
        if isinstance(expr, Monomial):
            return expr
        if isinstance(expr, (int, float)) and not isinstance(expr, bool):
            return cls(float(expr))
        if not isinstance(expr, str):
            raise ValueError(f"a scaling rule must be a string or number, got {expr!r}")
        try:
            tree = ast.parse(expr.replace("^", "**"), mode="eval")
            return _eval(tree.body)
        except (SyntaxError, ValueError, TypeError) as err:
            raise ValueError(f"cannot read scaling rule {expr!r}: {err}") from None

    def exponent(self, symbol: str) -> float:
        return dict(self.powers).get(symbol, 0.0)

    def __call__(self, **values: float) -> float:
        """Evaluate; every symbol with a non-zero exponent must be given."""
        out = self.coef
        for sym, exp in self.powers:
            if sym not in values:
                raise ValueError(f"scaling rule {self} needs a value for {sym}")
            out *= float(values[sym]) ** exp
        return out

    def __mul__(self, other: Any) -> Monomial:
        other = Monomial.parse(other)
        return Monomial(self.coef * other.coef, self.powers + other.powers)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Monomial:
        return self * Monomial.parse(other) ** -1

    def __pow__(self, k: float) -> Monomial:
        return Monomial(self.coef**k, tuple((s, e * k) for s, e in self.powers))

    def __str__(self) -> str:
        parts = [] if self.coef == 1.0 and self.powers else [f"{self.coef:g}"]
        for sym, exp in self.powers:
            parts.append(sym if exp == 1 else f"{sym}^{exp:g}")
        return "*".join(parts)

    def __repr__(self) -> str:
        return f"Monomial({str(self)!r})"


def _eval(node: ast.AST) -> Monomial:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return Monomial(float(node.value))
    if isinstance(node, ast.Name):
        if node.id not in SYMBOLS:
            raise ValueError(f"unknown symbol {node.id!r} (known: {', '.join(SYMBOLS)})")
        return Monomial(1.0, ((node.id, 1.0),))
    if isinstance(node, ast.BinOp):
        left = _eval(node.left)
        if isinstance(node.op, ast.Pow):
            exp = _number(node.right)
            return left**exp
        right = _eval(node.right)
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        raise ValueError("scaling rules are positive")
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "sqrt"
        and len(node.args) == 1
    ):
        return _eval(node.args[0]) ** 0.5
    raise ValueError("only products, quotients, powers and sqrt() of numbers and symbols")


def _number(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _number(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return _number(node.left) / _number(node.right)
    raise ValueError("exponents must be numbers")
