import json

import numpy as np
import pytest
import torch

from sparse_rt.formats import (
    FORMATS,
    BitmaskFormat,
    BsrFormat,
    BsrInt8Format,
    ButterflyFormat,
    CsrFormat,
    CsrInt8Format,
    DenseFormat,
    DenseInt8Format,
    NmFormat,
    PermutedFormat,
    get_format,
)


def sample_weight():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 10, generator=generator)
    weight[:, 1::2] = 0.0
    weight[2] = 0.0
    return weight


def examples():
    weight = sample_weight()
    generator = torch.Generator().manual_seed(1)
    return [
        DenseFormat.from_dense(weight),
        CsrFormat.from_dense(weight),
        BsrFormat.from_dense(weight, block_shape=(4, 4)),
        NmFormat.from_dense(weight, n=2, m=4),
        BitmaskFormat.from_dense(weight),
        ButterflyFormat(10, 6, torch.randn(4, 8, 2, 2, generator=generator)),
        PermutedFormat(
            10, 6, torch.rand(2, 10, generator=generator).argsort(dim=1).to(torch.int8), torch.randn(2, 5, 2, 2)
        ),
        CsrInt8Format.from_dense(weight),
        BsrInt8Format.from_dense(weight),
        DenseInt8Format.from_dense(weight),
    ]


def test_every_format_is_registered_under_its_name():
    assert FORMATS == {
        "dense": DenseFormat,
        "csr": CsrFormat,
        "bsr": BsrFormat,
        "nm": NmFormat,
        "bitmask": BitmaskFormat,
        "butterfly": ButterflyFormat,
        "permuted": PermutedFormat,
        "csr_int8": CsrInt8Format,
        "bsr_int8": BsrInt8Format,
        "dense_int8": DenseInt8Format,
    }
    assert get_format("nm") is NmFormat
    with pytest.raises(ValueError, match=r"unknown weight format 'coo'; known: \['bitmask', 'bsr', 'bsr_int8', 'butterfly', 'csr'"):
        get_format("coo")


@pytest.mark.parametrize("fmt", examples(), ids=lambda f: f.name)
def test_arrays_and_attributes_round_trip(fmt):
    arrays, attributes = fmt.arrays(), fmt.attributes()
    assert json.loads(json.dumps(attributes)) == attributes
    rebuilt = get_format(fmt.name).from_arrays({k: v.clone() for k, v in arrays.items()}, attributes)
    assert type(rebuilt) is type(fmt)
    assert rebuilt.shape == fmt.shape
    for name, array in rebuilt.arrays().items():
        assert torch.equal(array, arrays[name]) and array.dtype == arrays[name].dtype, name
    assert torch.equal(rebuilt.to_dense(), fmt.to_dense())
    assert fmt.nbytes == sum(a.numel() * a.element_size() for a in arrays.values())


@pytest.mark.parametrize("fmt", examples()[:5], ids=lambda f: f.name)
def test_sparse_formats_hold_the_sample_weight_exactly(fmt):
    assert torch.equal(fmt.to_dense(), sample_weight())
    assert fmt.shape == (6, 10)


@pytest.mark.parametrize("fmt", examples(), ids=lambda f: f.name)
def test_from_arrays_accepts_numpy_integer_attributes(fmt):
    attributes = {
        k: [np.int64(x) for x in v] if isinstance(v, list) else np.int64(v) for k, v in fmt.attributes().items()
    }
    rebuilt = type(fmt).from_arrays(fmt.arrays(), attributes)
    assert rebuilt.attributes() == fmt.attributes()
    assert all(type(x) is int for v in rebuilt.attributes().values() for x in (v if isinstance(v, list) else [v]))
