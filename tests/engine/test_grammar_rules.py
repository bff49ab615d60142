"""Identical rules merged: the grammar shrinks and matches exactly the strings it matched before."""

import json

import pytest
import xgrammar as xgr
from xgrammar.testing import _is_grammar_accept_string as grammar_accepts

from vlmserve.engine.grammar_rules import merge_identical_rules

# Two copies of a mutually recursive list grammar, one with a different leaf: only the true copies may merge.
LISTS = """item ::= "[" items "]" | "x"
items ::= "" | item ("," item)*
item_1 ::= "[" items_1 "]" | "x"
items_1 ::= "" | item_1 ("," item_1)*
item_2 ::= "[" items_2 "]" | "y"
items_2 ::= "" | item_2 ("," item_2)*
root ::= item ";" item_1 ";" item_2 "|" [x"\\]] "item"
"""


def rules(ebnf: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in ebnf.splitlines())


def test_true_copies_of_recursive_rules_merge_and_others_stay():
    merged = merge_identical_rules(LISTS)
    assert set(rules(merged)) == {"item", "items", "item_2", "items_2", "root"}
    assert rules(merged)["root"] == 'item ";" item ";" item_2 "|" [x"\\]] "item"'
    for text, matches in [('[x,[]];x;[y]|"item', True), ("x;[x];y|]item", True), ("x;x;x|xitem", False),
                          ("y;x;y|xitem", False)]:
        assert grammar_accepts(xgr.Grammar.from_ebnf(LISTS), text) is matches, text
        assert grammar_accepts(xgr.Grammar.from_ebnf(merged), text) is matches, text


@pytest.mark.parametrize(("text", "matches"), [('f(a="x", b=[1, 2])', True), ('f(a="x(y", b=[])', True),
                                               ('f(a=1, b=[1])', False), ('f(a="", b=["1"])', False)])
def test_a_structural_tag_of_several_schemas_shrinks_and_matches_the_same(text, matches):
    values = [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}]
    elements = [{"type": "const_string", "value": "f(a="}, {"type": "json_schema", "json_schema": values[0]},
                {"type": "const_string", "value": ", b="}, {"type": "json_schema", "json_schema": values[1]},
                {"type": "const_string", "value": ")"}]
    tag = {"type": "structural_tag", "format": {"type": "sequence", "elements": elements}}
    printed = str(xgr.Grammar.from_structural_tag(json.dumps(tag)))
    merged = merge_identical_rules(printed)
    copies = [sum(name.startswith("basic_any") for name in rules(grammar)) for grammar in (printed, merged)]
    assert copies == [2, 1]  # one set of JSON rules per schema before, one in all after
    assert grammar_accepts(xgr.Grammar.from_ebnf(printed), text) is matches
    assert grammar_accepts(xgr.Grammar.from_ebnf(merged), text) is matches


def test_text_that_is_not_a_rule_is_refused():
    with pytest.raises(ValueError, match="not a grammar rule"):
        merge_identical_rules('root ::= "a"\noops')
