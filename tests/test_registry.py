import pytest

from bench.errors import BenchError
from bench.registry import BACKBONES, METHODS, Registry, parse_spec, split_specs


def test_spec_defaults_and_canonical_text():
    spec = parse_spec(BACKBONES, "resnet20[width=2]")
    assert spec.name == "resnet20"
    assert spec.kwargs == {"width": 2, "shortcut": "A"}
    assert str(spec) == "resnet20[width=2]"
    assert str(parse_spec(BACKBONES, "resnet20[width=1]")) == "resnet20"  # default: not shown


def test_aliases_and_case():
    assert parse_spec(METHODS, "GAP_FC").name == "gap-fc"
    assert parse_spec(METHODS, "baseline").name == "gap-fc"


def test_option_types_are_parsed():
    reg = Registry("thing")
    reg.add("x", object(), "d", n=1, f=0.5, b=False, s="a", t=(1, 2))
    spec = parse_spec(reg, "x[n=3,f=1e-4,b=yes,s=zz,t=4+5+6]")
    assert spec.kwargs == {"n": 3, "f": 1e-4, "b": True, "s": "zz", "t": (4, 5, 6)}
    assert str(spec) == "x[b=true,f=0.0001,n=3,s=zz,t=4+5+6]"
    assert parse_spec(reg, "x[t=none]").kwargs["t"] == ()  # the empty list, as `bench list` shows it


@pytest.mark.parametrize("text, message", [
    ("nope", "unknown method 'nope'; valid: gap-fc"),
    ("gap-fc[", "malformed method"),
    ("gap-fc[x]", "malformed option 'x'"),
    ("gap-fc[r=2]", "unknown option 'r' for method 'gap-fc'; valid: none"),
])
def test_bad_specs(text, message):
    with pytest.raises(BenchError, match=message.replace("[", r"\[")):
        parse_spec(METHODS, text)


def test_bad_option_value():
    with pytest.raises(BenchError, match="expected an integer"):
        parse_spec(BACKBONES, "resnet20[width=wide]")


def test_split_specs_keeps_brackets():
    assert split_specs("a,b[x=1,y=2], c") == ["a", "b[x=1,y=2]", "c"]
