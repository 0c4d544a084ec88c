"""Hypothesis strategies shared by the storage tests: any JSON value the history must keep unchanged."""

from hypothesis import strategies as st

TEXT = st.characters(exclude_categories=("Cs",))  # lone surrogates are not text; storage refuses them, by test

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(TEXT, max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(TEXT, max_size=8), children, max_size=4),
    max_leaves=25,
)
