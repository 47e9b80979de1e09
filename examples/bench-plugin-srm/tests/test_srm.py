"""The plugin's own test: SRM fulfils bench's method contract."""
from bench.testing import check_method


def test_srm_fulfils_the_method_contract():
    check_method("srm")
