"""Lexical helpers for SQL text: a tokenizer, DISTINCT removal, and Spider's hardness levels.

The tokenizer knows SQLite's lexical classes (string literals, quoted identifiers, comments, numbers, words and
punctuation) and nothing of the grammar; the helpers built on it never look inside a string literal or a quoted
identifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<string>'(?:[^']|'')*'?)
  | (?P<quoted>"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|0[xX][0-9a-fA-F]+)
  | (?P<word>[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*)
  | (?P<param>[?:@$][A-Za-z0-9_]*)
  | (?P<punct><>|!=|==|>=|<=|\|\||<<|>>|.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class Token:
    """One lexical token: ``kind`` is ws, comment, string, quoted, number, word, param or punct."""

    kind: str
    text: str

    @property
    def upper(self) -> str:
        """The text in upper case (keywords compare this way)."""
        return self.text.upper()

    def is_word(self, *words: str) -> bool:
        """Whether this is a bare word equal (case-insensitively) to one of ``words``."""
        return self.kind == "word" and self.text.upper() in words


def tokenize(sql: str) -> list[Token]:
    """Split ``sql`` into tokens; concatenating their texts gives back ``sql`` exactly."""
    return [Token(m.lastgroup or "punct", m.group()) for m in _TOKEN_RE.finditer(sql)]


def significant(tokens: list[Token]) -> list[Token]:
    """The tokens without whitespace and comments."""
    return [t for t in tokens if t.kind not in ("ws", "comment")]


def remove_distinct(sql: str) -> str:
    """``sql`` with every bare ``DISTINCT`` keyword removed (string literals and quoted names untouched).

    This is what the official Spider evaluation does to both queries unless it is told to keep DISTINCT.
    """
    return "".join(t.text for t in tokenize(sql) if not t.is_word("DISTINCT"))


def first_keyword(sql: str) -> str:
    """The first significant token of ``sql`` in upper case ('' for an empty statement)."""
    toks = significant(tokenize(sql))
    return toks[0].upper if toks else ""


def sql_tokens(sql: str) -> list[str]:
    """The significant token texts of ``sql`` (Spider's ``query_toks`` field)."""
    return [t.text for t in significant(tokenize(sql))]


def sql_tokens_no_value(sql: str) -> list[str]:
    """Lower-cased tokens with literal values replaced by ``value`` (Spider's ``query_toks_no_value``)."""
    out = []
    for t in significant(tokenize(sql)):
        out.append("value" if t.kind in ("string", "number") else t.text.lower())
    return out


# ---------------------------------------------------------------------------------------------------------------
# Hardness
# ---------------------------------------------------------------------------------------------------------------

HARDNESS_LEVELS = ("easy", "medium", "hard", "extra")
"""Spider's difficulty levels, in increasing order."""

_AGGREGATES = ("MAX", "MIN", "COUNT", "SUM", "AVG")
_SET_OPS = ("UNION", "INTERSECT", "EXCEPT")
_CLAUSES = ("SELECT", "FROM", "WHERE", "GROUP", "HAVING", "ORDER", "LIMIT")


def _split_depth0(toks: list[Token]) -> list[tuple[int, Token]]:
    """(depth, token) pairs, depth counting open parentheses before the token."""
    out, depth = [], 0
    for t in toks:
        if t.text == ")":
            depth = max(0, depth - 1)
        out.append((depth, t))
        if t.text == "(":
            depth += 1
    return out


def _strip_subqueries(toks: list[Token]) -> tuple[list[Token], int]:
    """``toks`` with every parenthesised sub-SELECT cut out, and how many there were."""
    out: list[Token] = []
    count, i = 0, 0
    while i < len(toks):
        t = toks[i]
        if t.text == "(" and i + 1 < len(toks) and toks[i + 1].is_word("SELECT", "WITH"):
            depth, j = 1, i + 1
            while j < len(toks) and depth:
                depth += toks[j].text == "("
                depth -= toks[j].text == ")"
                j += 1
            count += 1
            out.append(Token("word", "SUBQUERY"))
            i = j
            continue
        out.append(t)
        i += 1
    return out, count


def _count_words(toks: list[Token], *words: str) -> int:
    return sum(1 for t in toks if t.is_word(*words))


def _count_aggregates(toks: list[Token]) -> int:
    return sum(
        1
        for i, t in enumerate(toks)
        if t.is_word(*_AGGREGATES) and i + 1 < len(toks) and toks[i + 1].text == "("
    )


def _count_depth0_commas(toks: list[Token]) -> int:
    return sum(1 for d, t in _split_depth0(toks) if d == 0 and t.text == ",")


def _connectives(toks: list[Token]) -> int:
    """AND/OR between conditions (the AND of BETWEEN x AND y excluded)."""
    n, pending_between = 0, 0
    for t in toks:
        if t.is_word("BETWEEN"):
            pending_between += 1
        elif t.is_word("AND") and pending_between:
            pending_between -= 1
        elif t.is_word("AND", "OR"):
            n += 1
    return n


def hardness_counts(sql: str) -> tuple[int, int, int]:
    """The three counts Spider's hardness rule uses: (component1, component2, others).

    component1: WHERE, GROUP BY, ORDER BY, LIMIT (one each), one per joined table beyond the first, one per OR and
    one per LIKE in the ON/WHERE/HAVING conditions. component2: one per sub-query in those conditions plus one for
    a set operation (UNION/INTERSECT/EXCEPT). others: one each for more than one aggregate, more than one selected
    column, more than one WHERE condition, more than one GROUP BY column. Only the outermost query is counted, as
    the official script does. The aggregate count follows the official script: aggregates in SELECT and ORDER BY,
    plus NOT conditions in WHERE and AND/OR connectives in HAVING (which that script counts in the same tally).
    """
    toks = significant(tokenize(sql))
    # Outermost query: up to the first depth-0 set operation.
    comp2 = 0
    main: list[Token] = []
    for d, t in _split_depth0(toks):
        if d == 0 and t.is_word(*_SET_OPS):
            comp2 += 1
            break
        main.append(t)
    # Skip a WITH clause: the outer query starts at the first depth-0 SELECT.
    pairs = _split_depth0(main)
    start = next((i for i, (d, t) in enumerate(pairs) if d == 0 and t.is_word("SELECT")), 0)
    pairs = pairs[start:]
    sections: dict[str, list[Token]] = {}
    current = None
    for d, t in pairs:
        if d == 0 and t.is_word(*_CLAUSES):
            current = t.upper
            sections.setdefault(current, [])
            continue
        if current is not None and not (d == 0 and t.is_word("BY") and current in ("GROUP", "ORDER")):
            sections[current].append(t)
    select, _ = _strip_subqueries(sections.get("SELECT", []))
    from_, _ = _strip_subqueries(sections.get("FROM", []))
    where, n_sub_where = _strip_subqueries(sections.get("WHERE", []))
    having, n_sub_having = _strip_subqueries(sections.get("HAVING", []))
    order, _ = _strip_subqueries(sections.get("ORDER", []))
    group = sections.get("GROUP", [])
    on_parts: list[Token] = []
    in_on = False
    for d, t in _split_depth0(from_):
        if d == 0 and t.is_word("ON"):
            in_on = True
            continue
        if d == 0 and (t.is_word("JOIN") or t.text == ","):
            in_on = False
        if in_on:
            on_parts.append(t)
    n_sub_on = sum(1 for t in on_parts if t.text == "SUBQUERY")
    comp2 += n_sub_where + n_sub_having + n_sub_on
    conds = on_parts + where + having
    comp1 = sum(1 for k in ("WHERE", "GROUP", "ORDER", "LIMIT") if k in sections)
    comp1 += sum(1 for d, t in _split_depth0(from_) if d == 0 and (t.is_word("JOIN") or t.text == ","))
    comp1 += _count_words(conds, "OR") + _count_words(conds, "LIKE")
    n_not = sum(
        1 for i, t in enumerate(where) if t.is_word("NOT") and not (i + 1 < len(where) and where[i + 1].is_word("NULL"))
    )
    aggs = _count_aggregates(select) + _count_aggregates(order) + n_not + _connectives(having)
    others = int(aggs > 1)
    others += int(_count_depth0_commas(select) > 0)
    others += int(_connectives(where) > 0)
    others += int(_count_depth0_commas(group) > 0)
    return comp1, comp2, others


def classify_hardness(sql: str) -> str:
    """Spider's difficulty level of a gold query: ``easy``, ``medium``, ``hard`` or ``extra``.

    Applies the official thresholds to :func:`hardness_counts`; the counts come from a lexical reading of the
    query rather than Spider's parser, so a rare query may land one level off the official label.
    """
    c1, c2, o = hardness_counts(sql)
    if c1 <= 1 and o == 0 and c2 == 0:
        return "easy"
    if (o <= 2 and c1 <= 1 and c2 == 0) or (c1 <= 2 and o < 2 and c2 == 0):
        return "medium"
    if (o > 2 and c1 <= 2 and c2 == 0) or (2 < c1 <= 3 and o <= 2 and c2 == 0) or (c1 <= 1 and o == 0 and c2 <= 1):
        return "hard"
    return "extra"
