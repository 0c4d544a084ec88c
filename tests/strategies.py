"""Hypothesis strategies shared by the storage tests: any JSON value the history must keep unchanged, and any value
that matches one of storage.shapes' schemas."""

import math

from hypothesis import strategies as st

TEXT = st.characters(exclude_categories=("Cs",))  # lone surrogates are not text; storage refuses them, by test

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(TEXT, max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(TEXT, max_size=8), children, max_size=4),
    max_leaves=25,
)


def matching(schema: dict) -> st.SearchStrategy:
    """Any value valid against `schema`, written in the keywords storage.shapes uses (type, properties, required,
    items, minimum, maximum, dependentRequired); objects also get keys the schema leaves free."""
    kind = schema.get("type")
    if kind is None:
        return json_values
    if isinstance(kind, list):
        return st.one_of([matching({**schema, "type": k}) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "string":
        return st.text(TEXT, max_size=20)
    if kind in ("number", "integer"):
        low, high = schema.get("minimum"), schema.get("maximum")
        integers = st.integers(None if low is None else math.ceil(low), None if high is None else math.floor(high))
        return integers if kind == "integer" else integers | st.floats(low, high, allow_nan=False, allow_infinity=False)
    if kind == "array":
        return st.lists(matching(schema.get("items", {})), max_size=4)
    assert kind == "object", schema
    properties, required = schema.get("properties", {}), schema.get("required", [])
    known = st.fixed_dictionaries({k: matching(properties[k]) for k in required},
                                  optional={k: matching(v) for k, v in properties.items() if k not in required})
    free = st.dictionaries(st.text(TEXT, max_size=8).filter(lambda k: k not in properties), json_values, max_size=2)
    needs = schema.get("dependentRequired", {})
    return st.builds(lambda given, extra: {**extra, **given}, known, free).filter(
        lambda d: all(n in d for key, names in needs.items() if key in d for n in names))
